//! Analyst scans of a SQLite warehouse file: rows are read with rusqlite on a blocking
//! thread and built into Arrow batches there. Through sqlx every row is a message across
//! its worker thread's channel (about 1.7 µs a row); here a row costs what SQLite's step
//! and the column reads cost. Values decode as sqlx decodes them: the same storage
//! classes are accepted for each kind (text only for text, REAL only for a float), and the
//! same text, integer and Julian-day forms of a time, so both paths give the same batches
//! or the same refusal.

use std::path::Path;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use datafusion::error::{DataFusionError, Result as DfResult};
use rusqlite::OpenFlags;
use rusqlite::types::ValueRef;
use tokio::sync::mpsc::Sender;

use crate::provider::{Batches, Builder};
use crate::schema::SqlKind;

/// Runs `sql` on the SQLite file at `path` (read-only, its own connection) and sends the
/// rows as batches of `schema` to `tx`. Returns when the rows end, on the first error
/// (sent too), or soon after the receiver is gone: a query that stops reading, or runs
/// past its deadline and is dropped, interrupts the statement (SQLite's progress handler
/// looks every few thousand instructions), even in the middle of a long step.
pub(crate) fn scan(
    path: &Path,
    sql: &str,
    table: &str,
    kinds: &[SqlKind],
    schema: SchemaRef,
    tx: Sender<DfResult<RecordBatch>>,
) {
    let result = (|| -> DfResult<()> {
        let sqlite = |e: rusqlite::Error| {
            DataFusionError::Execution(format!(
                "warehouse table `{table}` ({}): {e}",
                path.display()
            ))
        };
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sqlite)?;
        let watch = tx.clone();
        conn.progress_handler(10_000, Some(move || watch.is_closed()));
        let mut stmt = conn.prepare(sql).map_err(sqlite)?;
        let mut rows = stmt.query([]).map_err(sqlite)?;
        let mut out = Batches::new(kinds, schema.clone());
        while let Some(row) = rows.next().map_err(sqlite)? {
            for (i, kind) in kinds.iter().enumerate() {
                let v = row.get_ref(i).map_err(sqlite)?;
                out.builders[i].append_sqlite(v, *kind).map_err(|e| {
                    DataFusionError::Execution(format!(
                        "warehouse table `{table}` column `{}`: {e}",
                        schema.field(i).name()
                    ))
                })?;
            }
            if let Some(batch) = out.row_done()?
                && tx.blocking_send(Ok(batch)).is_err()
            {
                return Ok(()); // the query stopped reading
            }
        }
        if let Some(batch) = out.rest()? {
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

impl Builder {
    /// Appends one SQLite value when its storage class is one sqlx accepts for the kind;
    /// anything else is an error that says what was found.
    fn append_sqlite(&mut self, v: ValueRef<'_>, kind: SqlKind) -> Result<(), String> {
        let found = |v: ValueRef<'_>| match v {
            ValueRef::Null => "NULL".to_string(),
            ValueRef::Integer(i) => format!("the INTEGER {i}"),
            ValueRef::Real(f) => format!("the REAL {f}"),
            ValueRef::Text(t) => format!("the TEXT {:?}", String::from_utf8_lossy(t)),
            ValueRef::Blob(b) => format!("a BLOB of {} bytes", b.len()),
        };
        match (self, v) {
            (Builder::Text(b), ValueRef::Null) => b.append_null(),
            (Builder::Int(b), ValueRef::Null) => b.append_null(),
            (Builder::Float(b), ValueRef::Null) => b.append_null(),
            (Builder::Bool(b), ValueRef::Null) => b.append_null(),
            (Builder::Ts(b), ValueRef::Null) => b.append_null(),
            (Builder::Date(b), ValueRef::Null) => b.append_null(),
            (Builder::Text(b), ValueRef::Text(t)) => b.append_value(text(t)?),
            (Builder::Int(b), ValueRef::Integer(i)) => b.append_value(i),
            (Builder::Float(b), ValueRef::Real(f)) => b.append_value(f),
            (Builder::Bool(b), ValueRef::Integer(i)) => b.append_value(i != 0),
            (Builder::Ts(b), v) => {
                let t = match v {
                    ValueRef::Text(t) => datetime_from_text(text(t)?),
                    ValueRef::Integer(i) => Utc.fix().timestamp_opt(i, 0).single(),
                    ValueRef::Real(f) => datetime_from_julian_day(f),
                    _ => None,
                }
                .ok_or_else(|| format!("invalid datetime: {}", found(v)))?;
                b.append_value(match kind {
                    // sqlx's NaiveDateTime is the local time the value was written in
                    SqlKind::Timestamp { tz: false } => {
                        t.naive_local().and_utc().timestamp_micros()
                    }
                    _ => t.timestamp_micros(),
                })
            }
            (Builder::Date(b), ValueRef::Text(t)) => {
                let d = NaiveDate::parse_from_str(text(t)?, "%F")
                    .map_err(|e| format!("invalid date {:?}: {e}", String::from_utf8_lossy(t)))?;
                b.append_value(crate::provider::days(d))
            }
            (_, v) => {
                return Err(format!(
                    "found {} where a {kind:?} value was expected",
                    found(v)
                ));
            }
        }
        Ok(())
    }
}

fn text(t: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(t).map_err(|e| format!("text that is not UTF-8 ({e})"))
}

/// The text forms sqlx 0.8 accepts for a SQLite date-time: RFC 3339 first, then SQLite's
/// own forms with and without an offset (no offset is UTC).
fn datetime_from_text(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    const FORMATS: [&str; 12] = [
        "%F %T%.f",
        "%F %R",
        "%F %RZ",
        "%F %R%:z",
        "%F %T%.fZ",
        "%F %T%.f%:z",
        "%FT%R",
        "%FT%RZ",
        "%FT%R%:z",
        "%FT%T%.f",
        "%FT%T%.fZ",
        "%FT%T%.f%:z",
    ];
    FORMATS.iter().find_map(|f| {
        DateTime::parse_from_str(s, f).ok().or_else(|| {
            NaiveDateTime::parse_from_str(s, f)
                .ok()
                .map(|t| Utc.fix().from_utc_datetime(&t))
        })
    })
}

/// A REAL date-time is a Julian day number (SQLite's `julianday()`).
fn datetime_from_julian_day(day: f64) -> Option<DateTime<FixedOffset>> {
    let seconds = (day - 2_440_587.5) * 86_400.0;
    if !seconds.is_finite() {
        return None;
    }
    Utc.fix()
        .timestamp_opt(seconds.trunc() as i64, (seconds.fract() * 1e9).abs() as u32)
        .single()
}

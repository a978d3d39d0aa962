//! Encodes the rows of one segment of one table into Parquet files, one per Hive
//! partition directory (`dt=YYYY-MM-DD/<col>=<value>/...`), with the Delta statistics of
//! each file (row count, per-column min/max/null count) computed while writing.

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use chrono::DateTime;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::delta::DataFile;
use crate::error::{LakeError, Result};
use crate::layout::{HIVE_NULL, escape_partition_value};

/// Statistics are kept for the first this many data columns (Delta's default
/// `delta.dataSkippingNumIndexedCols`).
const STATS_COLUMNS: usize = 32;
/// String statistics longer than this are truncated (min) or left out (max), as Spark does.
const STATS_STRING_CHARS: usize = 32;

/// What a table sink writes: the table and how its files are partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Directory under the lake (`tasks`, `_dlq/task_events`).
    pub table: String,
    /// Partition columns in path order; `dt` is the UTC date of `event_time`.
    pub partition_by: Vec<String>,
    /// The event-time column (a µs UTC timestamp) that `dt` is computed from.
    pub event_time: Option<String>,
    /// zstd level (1..=22).
    pub zstd_level: i32,
    /// The schema of the rows the sink receives (partition columns included).
    pub schema: SchemaRef,
}

impl TableSpec {
    /// The table's logical (Delta) schema: data columns, then partition columns.
    pub fn table_schema(&self) -> SchemaRef {
        crate::delta::table_schema(&self.schema, &self.partition_by)
    }
}

/// One open file: its partition values, its encoder and its statistics so far.
struct OpenFile {
    values: Vec<(String, Option<String>)>,
    writer: ArrowWriter<Vec<u8>>,
    stats: Vec<ColumnStats>,
    rows: u64,
}

/// Min, max and null count of one column of one file.
struct ColumnStats {
    name: String,
    min: Option<MinAccumulator>,
    max: Option<MaxAccumulator>,
    nulls: u64,
}

/// Accumulates one segment's rows for one table; [`TableWriter::finish`] returns the files.
pub struct TableWriter {
    spec: TableSpec,
    props: WriterProperties,
    writers: BTreeMap<String, OpenFile>,
    file_schema: Option<SchemaRef>,
    rows: u64,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter")
            .field("table", &self.spec.table)
            .field("rows", &self.rows)
            .finish()
    }
}

impl TableWriter {
    /// A writer for one segment; `metadata` goes into every file's key-value metadata.
    pub fn new(spec: TableSpec, metadata: Vec<(String, String)>) -> Result<Self> {
        let level = ZstdLevel::try_new(spec.zstd_level).map_err(|e| LakeError::Parquet {
            table: spec.table.clone(),
            source: e,
        })?;
        let kv = metadata
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_key_value_metadata(Some(kv))
            .set_created_by(format!("ymera {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(TableWriter {
            spec,
            props,
            writers: BTreeMap::new(),
            file_schema: None,
            rows: 0,
        })
    }

    /// The table written.
    pub fn table(&self) -> &str {
        &self.spec.table
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// What the writer holds in memory: the encoded file so far (its buffer's capacity)
    /// and the open row group's buffers, encoded and not (parquet's estimate).
    pub fn memory(&self) -> u64 {
        self.writers
            .values()
            .map(|f| (f.writer.inner().capacity() + f.writer.memory_size()) as u64)
            .sum()
    }

    /// Encoded bytes so far, including what is buffered in open row groups.
    pub fn bytes(&self) -> u64 {
        self.writers
            .values()
            .map(|f| (f.writer.bytes_written() + f.writer.in_progress_size()) as u64)
            .sum()
    }

    /// Adds a batch, splitting it by partition directory.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (dirs, values) = self.partition_dirs(batch)?;
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| {
                !self
                    .spec
                    .partition_by
                    .contains(batch.schema().field(i).name())
            })
            .collect();
        let data = batch.project(&keep).map_err(|e| self.arrow_err(e))?;
        let schema = data.schema();
        match &self.file_schema {
            None => self.file_schema = Some(schema.clone()),
            Some(s) if s.fields() == schema.fields() => {}
            Some(s) => {
                return Err(LakeError::Invalid(format!(
                    "table `{}`: batch schema changed within a segment ({s:?} vs {schema:?})",
                    self.spec.table
                )));
            }
        }
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (row, dir) in dirs.into_iter().enumerate() {
            groups.entry(dir).or_default().push(row as u32);
        }
        let single = groups.len() == 1;
        for (dir, rows) in groups {
            let first_row = rows[0] as usize;
            let part = if single {
                data.clone()
            } else {
                take_record_batch(&data, &UInt32Array::from(rows)).map_err(|e| self.arrow_err(e))?
            };
            let file = match self.writers.get_mut(&dir) {
                Some(f) => f,
                None => {
                    let writer =
                        ArrowWriter::try_new(Vec::new(), schema.clone(), Some(self.props.clone()))
                            .map_err(|e| self.parquet_err(e))?;
                    let file = OpenFile {
                        values: self
                            .spec
                            .partition_by
                            .iter()
                            .zip(&values)
                            .map(|(c, v)| (c.clone(), v[first_row].clone()))
                            .collect(),
                        writer,
                        stats: column_stats(&schema),
                        rows: 0,
                    };
                    self.writers.entry(dir).or_insert(file)
                }
            };
            file.writer.write(&part).map_err(|e| LakeError::Parquet {
                table: self.spec.table.clone(),
                source: e,
            })?;
            file.rows += part.num_rows() as u64;
            for st in &mut file.stats {
                if let Some(col) = part.column_by_name(&st.name) {
                    st.update(col).map_err(|e| {
                        LakeError::Internal(format!("statistics of column `{}`: {e}", st.name))
                    })?;
                }
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes every file and returns them, each named `file_name` inside its partition
    /// directory (paths relative to the table).
    pub fn finish(self, file_name: &str) -> Result<Vec<DataFile>> {
        let mut out = Vec::with_capacity(self.writers.len());
        for (dir, mut file) in self.writers {
            let bytes = file.writer.into_inner().map_err(|e| LakeError::Parquet {
                table: self.spec.table.clone(),
                source: e,
            })?;
            let path = if dir.is_empty() {
                file_name.to_string()
            } else {
                format!("{dir}/{file_name}")
            };
            let stats = stats_json(file.rows, &mut file.stats);
            out.push(DataFile {
                path,
                partition_values: file.values,
                bytes: Bytes::from(bytes),
                rows: file.rows,
                stats,
            });
        }
        Ok(out)
    }

    /// The partition directory of every row, and the raw partition values per column
    /// (`None`: null).
    #[allow(clippy::type_complexity)]
    fn partition_dirs(
        &self,
        batch: &RecordBatch,
    ) -> Result<(Vec<String>, Vec<Vec<Option<String>>>)> {
        let n = batch.num_rows();
        let mut dirs = vec![String::new(); n];
        let mut raw = Vec::with_capacity(self.spec.partition_by.len());
        for col in &self.spec.partition_by {
            let values: Vec<Option<String>> = if col == "dt" {
                let et = self.spec.event_time.as_deref().ok_or_else(|| {
                    LakeError::Invalid(format!(
                        "table `{}`: partition `dt` needs an event_time column",
                        self.spec.table
                    ))
                })?;
                let array = column(batch, et, &self.spec.table)?;
                dates(array, et, &self.spec.table)?
            } else {
                let array = column(batch, col, &self.spec.table)?;
                let fmt = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                    .map_err(|e| self.arrow_err(e))?;
                (0..n)
                    .map(|i| (!array.is_null(i)).then(|| fmt.value(i).to_string()))
                    .collect()
            };
            for (d, v) in dirs.iter_mut().zip(&values) {
                if !d.is_empty() {
                    d.push('/');
                }
                d.push_str(col);
                d.push('=');
                match v {
                    Some(v) => d.push_str(&escape_partition_value(v)),
                    None => d.push_str(HIVE_NULL),
                }
            }
            raw.push(values);
        }
        Ok((dirs, raw))
    }

    fn arrow_err(&self, e: arrow::error::ArrowError) -> LakeError {
        LakeError::Arrow {
            table: self.spec.table.clone(),
            source: e,
        }
    }

    fn parquet_err(&self, e: parquet::errors::ParquetError) -> LakeError {
        LakeError::Parquet {
            table: self.spec.table.clone(),
            source: e,
        }
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        LakeError::Invalid(format!(
            "table `{table}`: partition column `{name}` is not in the sink's input"
        ))
    })
}

/// `YYYY-MM-DD` (UTC) of a µs timestamp column (`None`: null).
fn dates(array: &ArrayRef, name: &str, table: &str) -> Result<Vec<Option<String>>> {
    let DataType::Timestamp(TimeUnit::Microsecond, _) = array.data_type() else {
        return Err(LakeError::Invalid(format!(
            "table `{table}`: event_time column `{name}` must be timestamp_us, found {}",
            array.data_type()
        )));
    };
    let ts = array
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| {
            LakeError::Internal(format!("column `{name}` is not a µs timestamp array"))
        })?;
    Ok(ts
        .iter()
        .map(|v| {
            v.and_then(DateTime::from_timestamp_micros)
                .map(|t| t.format("%Y-%m-%d").to_string())
        })
        .collect())
}

/// Statistics for the first [`STATS_COLUMNS`] columns of a file's schema that are not
/// nested: min/max where Delta readers use them (numbers, strings, dates, timestamps), null
/// counts for all of them.
fn column_stats(schema: &Schema) -> Vec<ColumnStats> {
    schema
        .fields()
        .iter()
        .take(STATS_COLUMNS)
        // nested columns would need their statistics nested leaf by leaf: left out
        .filter(|f| !f.data_type().is_nested())
        .map(|f| {
            let ordered = matches!(
                f.data_type(),
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Date32
                    | DataType::Timestamp(TimeUnit::Microsecond, _)
            );
            ColumnStats {
                name: f.name().clone(),
                min: ordered
                    .then(|| MinAccumulator::try_new(f.data_type()).ok())
                    .flatten(),
                max: ordered
                    .then(|| MaxAccumulator::try_new(f.data_type()).ok())
                    .flatten(),
                nulls: 0,
            }
        })
        .collect()
}

impl ColumnStats {
    fn update(&mut self, col: &ArrayRef) -> datafusion::error::Result<()> {
        self.nulls += col.null_count() as u64;
        if let Some(m) = &mut self.min {
            m.update_batch(std::slice::from_ref(col))?;
        }
        if let Some(m) = &mut self.max {
            m.update_batch(std::slice::from_ref(col))?;
        }
        Ok(())
    }
}

/// The Delta `stats` JSON of a file: `numRecords`, `minValues`, `maxValues`, `nullCount`.
/// Timestamps are at millisecond precision (the spec's rule; delta-rs#4659): the minimum
/// rounded down, the maximum up, so every reader's pruning stays safe.
fn stats_json(rows: u64, stats: &mut [ColumnStats]) -> String {
    let mut min = serde_json::Map::new();
    let mut max = serde_json::Map::new();
    let mut nulls = serde_json::Map::new();
    for st in stats.iter_mut() {
        nulls.insert(st.name.clone(), st.nulls.into());
        if let Some(v) = st.min.as_mut().and_then(|m| m.evaluate().ok())
            && let Some(j) = stat_value(&v, false)
        {
            min.insert(st.name.clone(), j);
        }
        if let Some(v) = st.max.as_mut().and_then(|m| m.evaluate().ok())
            && let Some(j) = stat_value(&v, true)
        {
            max.insert(st.name.clone(), j);
        }
    }
    serde_json::json!({
        "numRecords": rows,
        "minValues": min,
        "maxValues": max,
        "nullCount": nulls,
    })
    .to_string()
}

/// One statistic as Delta writes it; `None` when it cannot be written exactly enough to be
/// a safe bound (NaN, a long string's maximum).
fn stat_value(v: &ScalarValue, is_max: bool) -> Option<serde_json::Value> {
    use serde_json::Value;
    let n = |x: Option<i64>| x.map(Value::from);
    match v {
        ScalarValue::Int8(x) => n(x.map(i64::from)),
        ScalarValue::Int16(x) => n(x.map(i64::from)),
        ScalarValue::Int32(x) => n(x.map(i64::from)),
        ScalarValue::Int64(x) => n(*x),
        ScalarValue::UInt8(x) => n(x.map(i64::from)),
        ScalarValue::UInt16(x) => n(x.map(i64::from)),
        ScalarValue::UInt32(x) => n(x.map(i64::from)),
        ScalarValue::Float32(x) => x
            .filter(|f| f.is_finite())
            .and_then(|f| serde_json::Number::from_f64(f64::from(f)))
            .map(Value::Number),
        ScalarValue::Float64(x) => x
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            let s = s.as_ref()?;
            if s.chars().count() <= STATS_STRING_CHARS {
                Some(Value::String(s.clone()))
            } else if is_max {
                None
            } else {
                Some(Value::String(s.chars().take(STATS_STRING_CHARS).collect()))
            }
        }
        ScalarValue::Date32(d) => {
            let d = chrono::NaiveDate::from_num_days_from_ce_opt((*d)? + 719_163)?;
            Some(Value::String(d.format("%Y-%m-%d").to_string()))
        }
        ScalarValue::TimestampMicrosecond(t, _) => {
            let t = (*t)?;
            let ms = if is_max {
                t.div_euclid(1000) + i64::from(t.rem_euclid(1000) != 0)
            } else {
                t.div_euclid(1000)
            };
            let dt = DateTime::from_timestamp_millis(ms)?;
            Some(Value::String(
                dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn utf8(values: Vec<Option<String>>) -> ArrayRef {
        Arc::new(StringArray::from(values))
    }

    #[test]
    fn splits_by_date_and_column_and_drops_partition_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("service", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let day = 86_400_000_000i64;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![0, day + 5, 10_500]).with_timezone("UTC"),
                ),
                utf8(vec![Some("a/b".into()), Some("x".into()), None]),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let spec = TableSpec {
            table: "t".into(),
            partition_by: vec!["dt".into(), "service".into()],
            event_time: Some("ts".into()),
            zstd_level: 3,
            schema,
        };
        let mut w = TableWriter::new(spec, vec![("ymera.segment".into(), "s".into())]).unwrap();
        w.write(&batch).unwrap();
        let files = w.finish("f.parquet").unwrap();
        let paths: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.rows)).collect();
        assert_eq!(
            paths,
            vec![
                (
                    "dt=1970-01-01/service=__HIVE_DEFAULT_PARTITION__/f.parquet",
                    1
                ),
                ("dt=1970-01-01/service=a%2Fb/f.parquet", 1),
                ("dt=1970-01-02/service=x/f.parquet", 1),
            ]
        );
        // Delta gets the raw values; a null partition value is null, not Hive's marker
        assert_eq!(
            files[1].partition_values,
            vec![
                ("dt".to_string(), Some("1970-01-01".to_string())),
                ("service".to_string(), Some("a/b".to_string()))
            ]
        );
        assert_eq!(files[0].partition_values[1], ("service".to_string(), None));
        // statistics: partition columns left out, timestamps at ms (max rounded up)
        let stats: serde_json::Value = serde_json::from_str(&files[0].stats).unwrap();
        assert_eq!(
            stats,
            serde_json::json!({
                "numRecords": 1,
                "minValues": {"ts": "1970-01-01T00:00:00.010Z", "n": 3},
                "maxValues": {"ts": "1970-01-01T00:00:00.011Z", "n": 3},
                "nullCount": {"ts": 0, "n": 0},
            })
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(files[2].bytes.clone()).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(kv.iter().any(|k| k.key == "ymera.segment"));
        let batches: Vec<_> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        let cols: Vec<_> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(cols, vec!["ts", "n"]);
    }
}

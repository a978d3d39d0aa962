//! Encodes the rows of one segment of one table into Parquet files, one per Hive
//! partition directory (`dt=YYYY-MM-DD/<col>=<value>/...`).

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use chrono::DateTime;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::{LakeError, Result};
use crate::layout::{HIVE_NULL, escape_partition_value};

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
}

/// Accumulates one segment's rows for one table; [`TableWriter::finish`] returns the files.
pub struct TableWriter {
    spec: TableSpec,
    props: WriterProperties,
    writers: BTreeMap<String, ArrowWriter<Vec<u8>>>,
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

    /// Encoded bytes so far, including what is buffered in open row groups.
    pub fn bytes(&self) -> u64 {
        self.writers
            .values()
            .map(|w| (w.bytes_written() + w.in_progress_size()) as u64)
            .sum()
    }

    /// Adds a batch, splitting it by partition directory.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let dirs = self.partition_dirs(batch)?;
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
            let part = if single {
                data.clone()
            } else {
                take_record_batch(&data, &UInt32Array::from(rows)).map_err(|e| self.arrow_err(e))?
            };
            let writer = match self.writers.get_mut(&dir) {
                Some(w) => w,
                None => {
                    let w =
                        ArrowWriter::try_new(Vec::new(), schema.clone(), Some(self.props.clone()))
                            .map_err(|e| self.parquet_err(e))?;
                    self.writers.entry(dir).or_insert(w)
                }
            };
            writer.write(&part).map_err(|e| LakeError::Parquet {
                table: self.spec.table.clone(),
                source: e,
            })?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes every file and returns `(path relative to the lake, bytes, rows)` per file,
    /// each named `file_name` inside its partition directory.
    pub fn finish(self, file_name: &str) -> Result<Vec<(String, Bytes, u64)>> {
        let mut out = Vec::with_capacity(self.writers.len());
        for (dir, writer) in self.writers {
            let rows = writer
                .flushed_row_groups()
                .iter()
                .map(|g| g.num_rows() as u64)
                .sum::<u64>();
            let buffered = writer.in_progress_rows() as u64;
            let bytes = writer.into_inner().map_err(|e| LakeError::Parquet {
                table: self.spec.table.clone(),
                source: e,
            })?;
            let path = if dir.is_empty() {
                format!("{}/{file_name}", self.spec.table)
            } else {
                format!("{}/{dir}/{file_name}", self.spec.table)
            };
            out.push((path, Bytes::from(bytes), rows + buffered));
        }
        Ok(out)
    }

    /// The partition directory of every row.
    fn partition_dirs(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let n = batch.num_rows();
        let mut dirs = vec![String::new(); n];
        for col in &self.spec.partition_by {
            let values: Vec<String> = if col == "dt" {
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
                    .map(|i| {
                        if array.is_null(i) {
                            HIVE_NULL.to_string()
                        } else {
                            escape_partition_value(&fmt.value(i).to_string())
                        }
                    })
                    .collect()
            };
            for (d, v) in dirs.iter_mut().zip(values) {
                if !d.is_empty() {
                    d.push('/');
                }
                d.push_str(col);
                d.push('=');
                d.push_str(&v);
            }
        }
        Ok(dirs)
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

/// `YYYY-MM-DD` (UTC) of a µs timestamp column; nulls become Hive's null partition.
fn dates(array: &ArrayRef, name: &str, table: &str) -> Result<Vec<String>> {
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
        .map(|v| match v.and_then(DateTime::from_timestamp_micros) {
            Some(t) => t.format("%Y-%m-%d").to_string(),
            None => HIVE_NULL.to_string(),
        })
        .collect())
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
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![0, day + 5, 10]).with_timezone("UTC"),
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
        };
        let mut w = TableWriter::new(spec, vec![("ymera.segment".into(), "s".into())]).unwrap();
        w.write(&batch).unwrap();
        let files = w.finish("f.parquet").unwrap();
        let paths: Vec<_> = files.iter().map(|(p, _, r)| (p.as_str(), *r)).collect();
        assert_eq!(
            paths,
            vec![
                (
                    "t/dt=1970-01-01/service=__HIVE_DEFAULT_PARTITION__/f.parquet",
                    1
                ),
                ("t/dt=1970-01-01/service=a%2Fb/f.parquet", 1),
                ("t/dt=1970-01-02/service=x/f.parquet", 1),
            ]
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(files[2].1.clone()).unwrap();
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

//! Dead-letter records: the original bytes plus the context headers of interfaces.md, as
//! Kafka headers (DLQ topic) or as the columns of the `_dlq/<pipeline>` lake table.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The event-time column of the DLQ table (its `dt` partition).
pub const FAILED_AT: &str = "ymera_failed_at";

/// Where the record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStage {
    Decode,
    Transform,
    Sink,
}

impl ErrorStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStage::Decode => "decode",
            ErrorStage::Transform => "transform",
            ErrorStage::Sink => "sink",
        }
    }
}

/// One dead-lettered record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub stage: ErrorStage,
    pub message: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub pipeline: String,
    /// µs since the epoch.
    pub failed_at: i64,
}

impl DeadLetter {
    /// The Kafka headers of interfaces.md.
    pub fn headers(&self) -> Vec<(&'static str, Vec<u8>)> {
        let failed_at = chrono::DateTime::from_timestamp_micros(self.failed_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default();
        vec![
            ("ymera.error.stage", self.stage.as_str().as_bytes().to_vec()),
            ("ymera.error.message", self.message.as_bytes().to_vec()),
            ("ymera.source.topic", self.topic.as_bytes().to_vec()),
            (
                "ymera.source.partition",
                self.partition.to_string().into_bytes(),
            ),
            ("ymera.source.offset", self.offset.to_string().into_bytes()),
            ("ymera.pipeline", self.pipeline.as_bytes().to_vec()),
            ("ymera.failed_at", failed_at.into_bytes()),
        ]
    }
}

/// Schema of the DLQ lake table: the header names with `.` turned into `_`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("ymera_error_stage", DataType::Utf8, false),
        Field::new("ymera_error_message", DataType::Utf8, false),
        Field::new("ymera_source_topic", DataType::Utf8, false),
        Field::new("ymera_source_partition", DataType::Int32, false),
        Field::new("ymera_source_offset", DataType::Int64, false),
        Field::new("ymera_pipeline", DataType::Utf8, false),
        Field::new(
            FAILED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// The DLQ rows as a batch.
pub fn to_batch(letters: &[DeadLetter]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|d| d.key.as_deref()),
        )),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|d| d.value.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.stage.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.message.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|d| d.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|d| d.offset),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.pipeline.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(letters.iter().map(|d| d.failed_at))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema(), cols)
}

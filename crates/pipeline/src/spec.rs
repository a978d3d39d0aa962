//! The pipeline YAML, as typed structures (interfaces.md "Pipeline YAML"). Every field's
//! doc comment is its reference documentation.

use std::collections::BTreeMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};
use ymera_common::ByteSize;

/// One pipeline: a source, SQL stages, sinks, a dead-letter target and offline tests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Unique name (`[a-z0-9_]+`); used in metrics, the commit log and the DLQ path.
    pub name: String,
    /// Where records come from and how they are decoded.
    pub source: SourceSpec,
    /// SQL stages, in order; each reads `input` or an earlier stage.
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    /// Where results go; each sink reads the last stage unless it names its `input`.
    pub sinks: Vec<SinkSpec>,
    /// Where bad records go when `on_bad_record: dlq` (the default).
    #[serde(default)]
    pub dlq: Option<DlqSpec>,
    /// Bounds of the micro-batches that flow through the SQL stages.
    #[serde(default)]
    pub batch: BatchSpec,
    /// Offline tests run by `ymera test`.
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

/// The source of a pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A Kafka consumer group.
    pub kafka: KafkaSpec,
    /// Record format: `json`.
    #[serde(default)]
    pub format: Format,
    /// Declared fields in order, `name: type` with `type?` for nullable.
    pub schema: IndexMap<String, String>,
    /// What to do with keys not declared in `schema`: `ignore` (counted) or `dlq`.
    #[serde(default)]
    pub unknown_fields: UnknownFieldsSpec,
    /// The event-time field (a `timestamp_us`), from which the `dt` partition is computed.
    #[serde(default)]
    pub event_time: Option<String>,
    /// What to do with a record that cannot be decoded or processed: `dlq`, `drop` or `fail`.
    #[serde(default)]
    pub on_bad_record: OnBadRecord,
}

/// Kafka consumer settings. Its `Debug` form hides secret values of `client`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// Bootstrap servers (`host:port,...`), or `embedded` for the in-process broker.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group; replicas with the same group share the partitions.
    pub group_id: String,
    /// Where a partition starts when the lake holds nothing of it: `earliest`, `latest` or
    /// `committed` (the group's offset, else earliest).
    #[serde(default)]
    pub start: Start,
    /// librdkafka settings passed through unchanged (TLS, SASL, fetch sizes...).
    #[serde(default, deserialize_with = "string_map")]
    pub client: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client: BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "token", "key"]
                    .iter()
                    .any(|w| k.contains(w));
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaSpec")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group_id", &self.group_id)
            .field("start", &self.start)
            .field("client", &client)
            .finish()
    }
}

/// `source.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
}

/// `source.unknown_fields`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFieldsSpec {
    #[default]
    Ignore,
    Dlq,
}

/// `source.on_bad_record`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    #[default]
    Dlq,
    Drop,
    Fail,
}

/// `source.kafka.start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
    Committed,
}

/// A stage: exactly one of `sql` or `anomaly`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Stage name; later stages and sinks refer to it.
    pub name: String,
    /// One SQL query (DataFusion dialect) over `input` and earlier stages.
    #[serde(default)]
    pub sql: Option<String>,
    /// An anomaly-detection stage: its input's columns plus `anomaly_score` and
    /// `is_anomaly`.
    #[serde(default)]
    pub anomaly: Option<AnomalySpec>,
}

/// An anomaly-detection stage: one streaming detector per distinct key, checkpointed
/// with the source offsets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    /// The stage it reads (default: the previous stage, or `input` when it is the first).
    #[serde(default)]
    pub input: Option<String>,
    /// Key columns: one detector per distinct key (default: none, one detector).
    #[serde(default)]
    pub key: Vec<String>,
    /// The event-time column (timestamp_us).
    pub time: String,
    /// The value column (float64 or int64).
    pub value: String,
    /// Detectors, threshold and tunables (default: robust_z, seasonal and changepoint,
    /// threshold 0.5).
    #[serde(default)]
    pub detector: ymera_anomaly::detect::DetectorConfig,
    /// Alert rules and where alerts go (default: no alerts).
    #[serde(default)]
    pub alerts: Option<AlertsSpec>,
}

/// Alerts of an anomaly stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSpec {
    /// The lake table alerts are appended to (`[a-z0-9_]+`), exactly once with the
    /// pipeline's commits.
    pub table: String,
    /// `is_anomaly` must hold this long (event time) before an alert opens (default 0s).
    #[serde(default, with = "ymera_common::units::duration")]
    pub min_duration: Duration,
    /// No new alert of the same key within this after one closes (default 0s).
    #[serde(default, with = "ymera_common::units::duration")]
    pub cooldown: Duration,
    /// A Kafka topic on the source's brokers notified of each opened alert, after the
    /// commit that holds it.
    #[serde(default)]
    pub topic: Option<String>,
    /// An HTTP endpoint notified (POST, JSON) of each opened alert, after the commit that
    /// holds it.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
}

/// An HTTP webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http(s)://host[:port]/path`; logs show only its scheme, host and port.
    pub url: String,
    /// Signs each body: header `X-Ymera-Signature: sha256=<hex HMAC-SHA256 of
    /// "<X-Ymera-Timestamp>.<body>">` (default: unsigned). Usually `${VAR}`.
    #[serde(default)]
    pub secret: Option<ymera_common::Secret>,
    /// How long one attempt may take (default 5s).
    #[serde(
        default = "default_webhook_timeout",
        with = "ymera_common::units::duration"
    )]
    pub timeout: Duration,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A sink, written as a one-key map: `- lake: {...}` or `- warehouse: {...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// A Parquet table in the lake.
    #[serde(default)]
    pub lake: Option<LakeSinkSpec>,
    /// A table in the SQL warehouse (`warehouse.url`).
    #[serde(default)]
    pub warehouse: Option<WarehouseSinkSpec>,
}

impl SinkSpec {
    /// The stage the sink reads, if named.
    pub fn input(&self) -> Option<&str> {
        match (&self.lake, &self.warehouse) {
            (Some(l), _) => l.input.as_deref(),
            (None, Some(w)) => w.input.as_deref(),
            (None, None) => None,
        }
    }
}

/// A warehouse table sink. The table is declared in `sql/migrations/`; rows and the
/// source offsets are written in one transaction (exactly once).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSinkSpec {
    /// Table name in the warehouse (`[A-Za-z_][A-Za-z0-9_]*`).
    pub table: String,
    /// Stage to read (default: the last stage, or `input` with no stages).
    #[serde(default)]
    pub input: Option<String>,
    /// `append` (default: every row is inserted; a duplicate key goes to the DLQ) or
    /// `upsert` (insert or update on `key`; the last row of a key in a segment wins).
    #[serde(default)]
    pub mode: WarehouseMode,
    /// The upsert key: the table's primary key or a unique constraint (`mode: upsert`).
    #[serde(default)]
    pub key: Vec<String>,
    /// When rows are written (a pipeline rolls all its sinks together).
    #[serde(default)]
    pub rolling: RollingSpec,
}

/// `sinks[].warehouse.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarehouseMode {
    #[default]
    Append,
    Upsert,
}

/// A lake table sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeSinkSpec {
    /// Table directory under the lake (`[a-z0-9_]+`).
    pub table: String,
    /// Stage to read (default: the last stage, or `input` with no stages).
    #[serde(default)]
    pub input: Option<String>,
    /// Partition columns in path order; `dt` is the UTC date of `source.event_time`.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Parquet compression: `zstd` (the only one offered), optionally with a level `zstd(5)`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// When a file is closed and published.
    #[serde(default)]
    pub rolling: RollingSpec,
}

fn default_compression() -> String {
    "zstd".into()
}

/// When the open files of a partition are published. A pipeline rolls all its sinks
/// together, as soon as any sink's limit is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingSpec {
    /// Rows per file (default 1000000).
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Encoded bytes per file (default 128MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Longest time a record waits before publication (default 1m): bounds latency.
    #[serde(
        default = "default_max_interval",
        with = "ymera_common::units::duration"
    )]
    pub max_interval: Duration,
}

fn default_max_rows() -> u64 {
    1_000_000
}
fn default_max_bytes() -> ByteSize {
    ByteSize(128 * 1024 * 1024)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for RollingSpec {
    fn default() -> Self {
        RollingSpec {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_interval: default_max_interval(),
        }
    }
}

/// Dead-letter target: exactly one of `topic` or `path`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqSpec {
    /// A Kafka topic on the source's brokers (at-least-once).
    #[serde(default)]
    pub topic: Option<String>,
    /// A lake table, `_dlq/<pipeline>` (exactly-once).
    #[serde(default)]
    pub path: Option<String>,
}

/// Micro-batch bounds (a batch is cut per Kafka partition when any bound is reached).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Records per batch (default 10000).
    #[serde(default = "default_batch_records")]
    pub max_records: usize,
    /// Raw bytes per batch (default 8MiB).
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: ByteSize,
    /// Longest wait for a batch to fill (default 500ms).
    #[serde(default = "default_batch_wait", with = "ymera_common::units::duration")]
    pub max_wait: Duration,
}

fn default_batch_records() -> usize {
    10_000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(8 * 1024 * 1024)
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(500)
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            max_records: default_batch_records(),
            max_bytes: default_batch_bytes(),
            max_wait: default_batch_wait(),
        }
    }
}

/// An offline test: input records and the expected rows of some stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// What the test checks.
    pub name: String,
    /// Source records (as the JSON objects Kafka would carry).
    pub input: Vec<serde_json::Value>,
    /// Expected rows per stage name (`input` included); all columns, in any order.
    pub expect: BTreeMap<String, Vec<serde_json::Value>>,
}

/// librdkafka settings are strings; accept numbers and booleans written plainly too.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_client_secrets() {
        let k = KafkaSpec {
            brokers: "b:9092".into(),
            topics: vec!["t".into()],
            group_id: "g".into(),
            start: Start::Earliest,
            client: BTreeMap::from([
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("ssl.key.password".to_string(), "s3cret".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ]),
        };
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }
}

//! `ymera run` records its own input rate, so that the autoscaler can forecast it
//! (`/v1/autoscale/ymera-run/forecast`, interfaces.md "Forecasts for the autoscaler").
//!
//! Every minute, one row per owned partition per pipeline for the minute that just
//! ended: the records that arrived on it (the growth of its high watermark: the rate the
//! producers write, not the rate this replica keeps up with), its consumer lag at the
//! minute's end, and how many partitions the pipeline's topics have. The rows go to the
//! lake table [`TABLE`] (`dt` partitions), one file per replica per flush
//! (`run.input_rate_flush`, default 1m). Rows are per partition so that a reader needs no replica
//! to have flushed to estimate a minute: over the partitions present, the sum scaled by
//! `partitions / rows` is exact once every owner has flushed and unbiased before.
//!
//! The figures come from librdkafka's statistics (every 5 s), read through
//! [`ymera_ingest::kafka::Probe`]; nothing here waits on Kafka. A partition that changed
//! hands during a minute has no row for that minute (its new owner saw no start value).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use ymera_ingest::kafka::{Probe, ProbeReading};
use ymera_lake::{Lake, TableSpec};

/// The lake table of input rates.
pub const TABLE: &str = "ymera_run_input";

/// Rows kept for a later flush while the lake cannot be written (then the oldest go):
/// a day of 64 partitions.
const MAX_HELD_ROWS: usize = 64 * 24 * 60;

/// One partition's minute on one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct RateRow {
    /// Start of the minute, µs since the epoch (UTC).
    pub ts: i64,
    pub pipeline: String,
    pub topic: String,
    pub partition: i32,
    /// The replica that owned the partition.
    pub member: String,
    /// Records that arrived on the partition during the minute.
    pub records: i64,
    /// How long the minute really was between the two readings.
    pub seconds: f64,
    /// Consumer lag at the minute's end.
    pub lag: i64,
    /// Partitions of the pipeline's topics.
    pub partitions: i32,
}

/// The probes of every pipeline of the process, and the rows not yet written.
#[derive(Debug)]
pub struct InputRate {
    member: String,
    probes: Mutex<BTreeMap<String, Arc<Probe>>>,
}

impl InputRate {
    /// `member` names this replica in the rows (the pod name, say).
    pub fn new(member: impl Into<String>) -> Arc<InputRate> {
        Arc::new(InputRate {
            member: member.into(),
            probes: Mutex::default(),
        })
    }

    /// The replica's name: `$HOSTNAME` (a pod's name) and the process id.
    pub fn member_name() -> String {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into());
        format!("{host}-{}", std::process::id())
    }

    /// The probe a pipeline's source reports to.
    pub fn register(&self, pipeline: &str) -> Arc<Probe> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(pipeline.to_string())
            .or_default()
            .clone()
    }

    fn readings(&self) -> BTreeMap<String, ProbeReading> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, p)| (name.clone(), p.reading()))
            .collect()
    }

    /// Records every minute and writes the rows every `flush` (and once more at
    /// shutdown), until `shutdown`. A failed write keeps the rows for the next flush (at
    /// most `MAX_HELD_ROWS`; the oldest go first, with a warning).
    pub async fn record(self: Arc<Self>, lake: Lake, flush: Duration, shutdown: CancellationToken) {
        let mut previous: Option<(i64, BTreeMap<String, ProbeReading>)> = None;
        let mut rows: Vec<RateRow> = Vec::new();
        let mut last_flush = tokio::time::Instant::now();
        loop {
            let now = chrono::Utc::now().timestamp_micros();
            let next_minute = (now.div_euclid(60_000_000) + 1) * 60_000_000;
            let wait = Duration::from_micros((next_minute - now) as u64);
            let stopping = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = shutdown.cancelled() => true,
            };
            if !stopping {
                let now = chrono::Utc::now().timestamp_micros();
                let readings = self.readings();
                if let Some((then, before)) = &previous {
                    rows.extend(minute_rows(&self.member, *then, now, before, &readings));
                }
                previous = Some((now, readings));
            }
            // ticks come a minute apart less the time the last write took: a second's slack
            let due = last_flush.elapsed() + Duration::from_secs(1) >= flush;
            if !rows.is_empty() && (stopping || due) {
                last_flush = tokio::time::Instant::now();
                match write_rows(&lake, &self.member, &rows).await {
                    Ok(files) => {
                        info!(
                            table = TABLE,
                            rows = rows.len(),
                            files,
                            "recorded the input rate"
                        );
                        rows.clear();
                    }
                    Err(e) => {
                        warn!(table = TABLE, rows = rows.len(), error = %e, "cannot write the input rate; retrying at the next flush");
                        if rows.len() > MAX_HELD_ROWS {
                            rows.drain(..rows.len() - MAX_HELD_ROWS);
                        }
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }
}

/// The rows of the minute between two readings (`then`, `now` in µs): one per partition
/// owned at both.
pub fn minute_rows(
    member: &str,
    then: i64,
    now: i64,
    before: &BTreeMap<String, ProbeReading>,
    after: &BTreeMap<String, ProbeReading>,
) -> Vec<RateRow> {
    // the minute that just ended: readings are taken on the minute boundary
    let ts = then.div_euclid(60_000_000) * 60_000_000;
    let seconds = (now - then) as f64 / 1e6;
    let mut out = Vec::new();
    for (pipeline, r) in after {
        let Some(b) = before.get(pipeline) else {
            continue;
        };
        let partitions = r.partitions.values().sum::<u32>() as i32;
        for (tp, (hi, lag)) in &r.owned {
            let Some((h0, _)) = b.owned.get(tp) else {
                continue;
            };
            out.push(RateRow {
                ts,
                pipeline: pipeline.clone(),
                topic: tp.0.clone(),
                partition: tp.1,
                member: member.to_string(),
                records: (hi - h0).max(0),
                seconds,
                lag: *lag,
                partitions,
            });
        }
    }
    out
}

/// The table's columns.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("member", DataType::Utf8, false),
        Field::new("records", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new("lag", DataType::Int64, false),
        Field::new("partitions", DataType::Int32, false),
    ]))
}

fn batch(rows: &[RateRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.ts).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.pipeline.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.member.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.records))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.seconds),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.lag))),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partitions),
        )),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Writes the rows as one file per `dt` directory, named after the replica and the first
/// minute (`<member>+<µs>.parquet`), in one Delta commit whose txn
/// (`ymera:ymera_run_input:<member>:0`) is the last minute written, so a retried flush
/// cannot add a minute twice; returns how many files.
pub async fn write_rows(lake: &Lake, member: &str, rows: &[RateRow]) -> Result<usize, String> {
    // rows the table already holds (a flush whose outcome was unknown and landed) go: a
    // range starting inside the stored position would be refused as an overlap
    let id = ymera_lake::delta::app_id(TABLE, member, 0);
    let stored = ymera_lake::delta::positions(lake, TABLE, std::slice::from_ref(&id))
        .await
        .map_err(|e| e.to_string())?
        .get(&id)
        .copied();
    let rows: Vec<RateRow> = rows
        .iter()
        .filter(|r| stored.is_none_or(|v| r.ts > v))
        .cloned()
        .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let rows = rows.as_slice();
    let first = rows.iter().map(|r| r.ts).min().unwrap_or_default();
    let last = rows.iter().map(|r| r.ts).max().unwrap_or_default();
    let spec = TableSpec {
        table: TABLE.into(),
        partition_by: vec!["dt".into()],
        event_time: Some("ts".into()),
        zstd_level: 3,
        schema: schema(),
    };
    let b = batch(rows).map_err(|e| format!("{TABLE}: {e}"))?;
    let name = format!(
        "{}+{first:020}.parquet",
        ymera_lake::layout::escape_partition_value(member)
    );
    // the txn covers everything after the stored minute (minutes are not contiguous offsets)
    let txn = (id, stored.map_or(first, |v| v + 1), last);
    let (_, _, n) = ymera_lake::delta::append(lake, &spec, vec![b], &name, vec![txn], Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(owned: &[(&str, i32, i64, i64)], partitions: u32) -> ProbeReading {
        ProbeReading {
            owned: owned
                .iter()
                .map(|(t, p, hi, lag)| ((t.to_string(), *p), (*hi, *lag)))
                .collect(),
            partitions: [("events".to_string(), partitions)].into(),
        }
    }

    #[test]
    fn a_minute_has_a_row_per_partition_owned_at_both_readings() {
        let t0 = 1_700_000_040_000_000; // a minute boundary
        let before = BTreeMap::from([(
            "p".to_string(),
            reading(&[("events", 0, 100, 5), ("events", 1, 200, 0)], 4),
        )]);
        let after = BTreeMap::from([(
            "p".to_string(),
            // partition 1 went elsewhere, partition 2 arrived: only 0 has a minute
            reading(&[("events", 0, 160, 7), ("events", 2, 900, 3)], 4),
        )]);
        let rows = minute_rows("pod-a-1", t0, t0 + 60_500_000, &before, &after);
        assert_eq!(
            rows,
            vec![RateRow {
                ts: t0,
                pipeline: "p".into(),
                topic: "events".into(),
                partition: 0,
                member: "pod-a-1".into(),
                records: 60,
                seconds: 60.5,
                lag: 7,
                partitions: 4,
            }]
        );
        // a pipeline first seen now has no minute yet
        assert!(minute_rows("m", t0, t0 + 60_000_000, &BTreeMap::new(), &after).is_empty());
    }

    #[tokio::test]
    async fn rows_land_in_the_lake_as_a_dt_partitioned_table() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let day = 1_700_006_400_000_000i64; // 2023-11-15T00:00:00Z
        let row = |ts: i64| RateRow {
            ts,
            pipeline: "p".into(),
            topic: "events".into(),
            partition: 0,
            member: "pod/a".into(),
            records: 1,
            seconds: 60.0,
            lag: 0,
            partitions: 1,
        };
        // a flush across midnight: one file per date
        let n = write_rows(&lake, "pod/a", &[row(day - 60_000_000), row(day)])
            .await
            .unwrap();
        assert_eq!(n, 2);
        // a retried flush (the first one's outcome unknown) adds nothing
        let n = write_rows(&lake, "pod/a", &[row(day - 60_000_000), row(day)])
            .await
            .unwrap();
        assert_eq!(n, 0);
        let mut files: Vec<String> = lake
            .list(TABLE)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .collect();
        files.sort();
        assert_eq!(
            files,
            vec![
                format!(
                    "{TABLE}/dt=2023-11-14/pod%2Fa+{:020}.parquet",
                    day - 60_000_000
                ),
                format!(
                    "{TABLE}/dt=2023-11-15/pod%2Fa+{:020}.parquet",
                    day - 60_000_000
                ),
            ]
        );
        // held rows that landed, retried with the next minute: only the new minute is added
        let n = write_rows(
            &lake,
            "pod/a",
            &[row(day - 60_000_000), row(day), row(day + 60_000_000)],
        )
        .await
        .unwrap();
        assert_eq!(n, 1);
        let live = ymera_lake::delta::live_files(&lake, TABLE).await.unwrap();
        assert_eq!(live.len(), 3, "{live:?}");
    }
}

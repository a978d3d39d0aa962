//! The runtime of one pipeline: Kafka chunks -> strict decode -> SQL stages -> open
//! segments -> publication -> commit record -> Kafka commit.
//!
//! Invariants:
//! - a partition's segment is published only while this process owns the partition under
//!   the epoch the records were read in (the source's fence);
//! - the Kafka offset committed for a partition is always the next offset after a
//!   segment whose commit record is durable;
//! - a failed publication is retried with backoff and consumption waits meanwhile.

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};
use ymera_anomaly::alerts::AlertEvent;
use ymera_common::health::Health;
use ymera_ingest::decode::{JsonDecoder, UnknownFields};
use ymera_ingest::kafka::{
    Chunk, KafkaSource, Record, Resolver, SourceEvent, SourceSettings, StartFrom, TopicPartition,
};
use ymera_ingest::produce::Producer;
use ymera_lake::{Lake, SegmentId, TableWriter, ledger};
use ymera_transform::INPUT;
use ymera_warehouse::Warehouse;

use crate::chain::{Chain, ChainState};
use crate::checkpoint::{self, Checkpoint, Notice};
use crate::dlq::{DeadLetter, ErrorStage};
use crate::spec::{OnBadRecord, Start, UnknownFieldsSpec};
use crate::validate::Pipeline;

/// Why a pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("pipeline `{pipeline}`: {message}")]
    Source { pipeline: String, message: String },
    #[error(
        "pipeline `{pipeline}`: bad record at {topic}/{partition}/{offset} ({stage}): {message} (on_bad_record: fail)"
    )]
    BadRecord {
        pipeline: String,
        topic: String,
        partition: i32,
        offset: i64,
        stage: &'static str,
        message: String,
    },
    #[error("pipeline `{pipeline}`: {0}", pipeline = .1)]
    Transform(ymera_transform::TransformError, String),
    #[error("pipeline `{pipeline}`: lake: {source}")]
    Lake {
        pipeline: String,
        source: ymera_lake::LakeError,
    },
    #[error("pipeline `{pipeline}`: {source}")]
    Warehouse {
        pipeline: String,
        source: ymera_warehouse::WarehouseError,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub records_in: u64,
    pub rows_written: HashMap<String, u64>,
    pub files_written: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub skipped_duplicates: u64,
    /// When the last segment was committed (for throughput figures without idle time).
    pub last_commit_at: Option<Instant>,
}

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    pub lake: Lake,
    /// The warehouse, required when the pipeline has warehouse sinks.
    pub warehouse: Option<Warehouse>,
    pub stop_when_idle: Option<Duration>,
    pub shutdown: CancellationToken,
    pub health: Arc<Health>,
    /// Live totals over every pipeline of the process (for progress displays).
    pub progress: Arc<Progress>,
    /// Where the source reports its partitions' high watermarks and lag (`ymera run`
    /// records its input rate from them; crate::rate).
    pub input_rate: Option<Arc<crate::rate::InputRate>>,
}

/// Running totals, readable while pipelines run.
#[derive(Debug, Default)]
pub struct Progress {
    pub records_in: std::sync::atomic::AtomicU64,
    pub files_written: std::sync::atomic::AtomicU64,
    pub dead_lettered: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One partition's open segment: the rows read since the last publication. Each group of
/// sinks that records its own position (the lake's commit log; the warehouse's offsets
/// table) has its own part, starting where that group's position is: after a crash
/// between the two, one part starts later than the other until they meet.
struct Segment {
    epoch: u64,
    last: i64,
    opened: Instant,
    lake: Option<LakePart>,
    warehouse: Option<WarehousePart>,
}

struct LakePart {
    first: i64,
    writers: Vec<TableWriter>,
    dlq: Option<TableWriter>,
}

struct WarehousePart {
    first: i64,
    /// Per warehouse sink: its batches and where each came from.
    batches: Vec<Vec<RecordBatch>>,
    origins: Vec<Vec<ymera_warehouse::Origin>>,
    rows: u64,
    bytes: u64,
}

/// The next offset each group of sinks has durably recorded for a partition (`None`: the
/// group has nothing of it; the group is absent when the pipeline has no such sinks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    lake: Option<i64>,
    warehouse: Option<i64>,
}

type HeldMap = Arc<std::sync::Mutex<HashMap<TopicPartition, Held>>>;

/// The anomaly-state checkpoint the resolver chose per assigned partition (`None`: start
/// from fresh detectors).
type CheckpointMap = Arc<std::sync::Mutex<HashMap<TopicPartition, Option<Checkpoint>>>>;

/// One partition's anomaly state in memory, with its alerts to notify.
#[derive(Debug, Default)]
struct TpState {
    chain: ChainState,
    /// Alerts opened in the open segment (notified once it commits).
    fresh: Vec<Notice>,
    /// Alerts whose commit succeeded, not yet notified.
    pending: Vec<Notice>,
    /// Ids already notified (the newest `checkpoint::NOTIFIED`).
    notified: std::collections::VecDeque<String>,
}

/// Resolves where each assigned partition resumes: each sink group's recorded position,
/// and the source starts at the lowest (interfaces.md).
struct SinkResolver {
    lake: Lake,
    warehouse: Option<Warehouse>,
    pipeline: String,
    /// Lake tables of the pipeline (DLQ included); empty when it writes none.
    tables: Vec<String>,
    held: HeldMap,
    /// `start: earliest`: a group with no position may start from the log's beginning.
    from_earliest: bool,
    handle: tokio::runtime::Handle,
    /// The pipeline has anomaly stages: their checkpoints move the start back.
    stateful: bool,
    checkpoints: CheckpointMap,
}

impl Resolver for SinkResolver {
    fn resolve(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, String> {
        self.handle.block_on(async {
            let lake_positions = if self.tables.is_empty() {
                HashMap::new()
            } else {
                let positions = ledger::read_positions(&self.lake, &self.pipeline)
                    .await
                    .map_err(|e| e.to_string())?;
                let owned = |tp: &TopicPartition| partitions.contains(tp);
                ledger::remove_uncommitted(
                    &self.lake,
                    &self.pipeline,
                    &self.tables,
                    &positions,
                    &owned,
                )
                .await
                .map_err(|e| e.to_string())?;
                positions
            };
            let wh_positions = match &self.warehouse {
                Some(wh) => wh
                    .read_positions(&self.pipeline)
                    .await
                    .map_err(|e| e.to_string())?,
                None => HashMap::new(),
            };
            let starts: HashMap<TopicPartition, Option<i64>> = {
            let mut held = self
                .held
                .lock()
                .map_err(|_| "internal: poisoned lock".to_string())?;
            partitions
                .iter()
                .map(|tp| {
                    let h = Held {
                        lake: lake_positions.get(tp).copied(),
                        warehouse: wh_positions.get(tp).copied(),
                    };
                    held.insert(tp.clone(), h);
                    // The source resumes at the lowest position over the groups. A group
                    // with nothing of the partition needs it from `start`; with `earliest`
                    // that is the beginning of the log, otherwise it joins at the lowest
                    // position another group holds (so that group loses nothing).
                    let mut known = Vec::new();
                    let mut missing = false;
                    for (present, pos) in [
                        (!self.tables.is_empty(), h.lake),
                        (self.warehouse.is_some(), h.warehouse),
                    ] {
                        match (present, pos) {
                            (true, Some(p)) => known.push(p),
                            (true, None) => missing = true,
                            (false, _) => {}
                        }
                    }
                    let start = if missing && self.from_earliest {
                        None
                    } else {
                        known.into_iter().min()
                    };
                    (tp.clone(), start)
                })
                .collect()
            };
            if !self.stateful {
                return Ok(starts);
            }
            // Anomaly state: the newest checkpoint at or before where the sinks resume; the
            // source starts there and the records up to the sinks' position only feed the
            // stages (run.rs `process`, warm mode).
            let mut out = HashMap::new();
            let mut chosen = HashMap::new();
            for (tp, start) in starts {
                let c = checkpoint::load(&self.lake, &self.pipeline, &tp, start)
                    .await
                    .map_err(|e| format!("anomaly state of {}/{}: {e}", tp.0, tp.1))?;
                let resume = match (&c, start) {
                    (Some(c), _) => {
                        info!(pipeline = self.pipeline, topic = tp.0, partition = tp.1, checkpoint = c.next_offset, sinks_at = ?start, "anomaly state restored");
                        Some(c.next_offset)
                    }
                    (None, Some(n)) => {
                        warn!(pipeline = self.pipeline, topic = tp.0, partition = tp.1, sinks_at = n, "no anomaly-state checkpoint at or before the sinks' position: starting fresh detectors (they warm up again)");
                        Some(n)
                    }
                    (None, None) => None,
                };
                chosen.insert(tp.clone(), c);
                out.insert(tp, resume);
            }
            self.checkpoints
                .lock()
                .map_err(|_| "internal: poisoned lock".to_string())?
                .extend(chosen);
            Ok(out)
        })
    }
}

/// Runs a pipeline until shutdown, idleness (`stop_when_idle`) or an error.
pub async fn run(
    p: Arc<Pipeline>,
    brokers: String,
    opts: RunOptions,
) -> Result<RunStats, RunError> {
    let name = p.spec.name.clone();
    let component = format!("pipeline:{name}");
    opts.health.set(&component, Some("starting".into()));
    match opts.lake.clean_staging(Duration::from_secs(15 * 60)).await {
        Ok(n) if n > 0 => info!(
            pipeline = name,
            removed = n,
            "removed orphaned staging files"
        ),
        Ok(_) => {}
        Err(e) => warn!(pipeline = name, error = %e, "cannot clean the staging directory"),
    }
    let src = &p.spec.source;
    let settings = SourceSettings {
        pipeline: name.clone(),
        brokers: brokers.clone(),
        topics: src.kafka.topics.clone(),
        group_id: src.kafka.group_id.clone(),
        start: match src.kafka.start {
            Start::Earliest => StartFrom::Earliest,
            Start::Latest => StartFrom::Latest,
            Start::Committed => StartFrom::Committed,
        },
        client: src.kafka.client.clone(),
        max_records: p.spec.batch.max_records,
        max_bytes: p.spec.batch.max_bytes.0 as usize,
        max_wait: p.spec.batch.max_wait,
        stop_when_idle: opts.stop_when_idle,
        probe: opts.input_rate.as_ref().map(|r| r.register(&name)),
    };
    let warehouse = if p.warehouse_sinks.is_empty() {
        None
    } else {
        Some(opts.warehouse.clone().ok_or_else(|| RunError::Source {
            pipeline: name.clone(),
            message: "the pipeline has warehouse sinks but no warehouse is configured".into(),
        })?)
    };
    let held: HeldMap = Arc::default();
    let checkpoints: CheckpointMap = Arc::default();
    let chain = p.chain();
    let alert_producer = if chain.anomaly_stages().any(|a| a.notify.topic.is_some()) {
        Some(
            ymera_ingest::produce::producer(&brokers, &src.kafka.client).map_err(|e| {
                RunError::Source {
                    pipeline: name.clone(),
                    message: format!("cannot create the alerts producer: {e}"),
                }
            })?,
        )
    } else {
        None
    };
    let resolver = Arc::new(SinkResolver {
        lake: opts.lake.clone(),
        warehouse: warehouse.clone(),
        pipeline: name.clone(),
        tables: p.tables(),
        held: held.clone(),
        from_earliest: src.kafka.start == Start::Earliest,
        handle: tokio::runtime::Handle::current(),
        stateful: p.has_state(),
        checkpoints: checkpoints.clone(),
    });
    let dlq_producer = match p.spec.dlq.as_ref().and_then(|d| d.topic.clone()) {
        Some(topic) => Some((
            topic,
            ymera_ingest::produce::producer(&brokers, &src.kafka.client).map_err(|e| {
                RunError::Source {
                    pipeline: name.clone(),
                    message: format!("cannot create the DLQ producer: {e}"),
                }
            })?,
        )),
        None => None,
    };
    let (source, mut events) =
        KafkaSource::start(settings, resolver).map_err(|e| RunError::Source {
            pipeline: name.clone(),
            message: format!("cannot start the Kafka consumer: {e}"),
        })?;
    let source = Arc::new(source);
    let mut runner = Runner {
        p: p.clone(),
        opts: opts.clone(),
        chain,
        states: HashMap::new(),
        checkpoints,
        alert_producer,
        decoder: JsonDecoder::new(
            &p.fields,
            match src.unknown_fields {
                UnknownFieldsSpec::Ignore => UnknownFields::Ignore,
                UnknownFieldsSpec::Dlq => UnknownFields::Dlq,
            },
        ),
        source: source.clone(),
        segments: HashMap::new(),
        next: HashMap::new(),
        held_shared: held,
        held: HashMap::new(),
        warehouse,
        stats: RunStats::default(),
        dlq_producer,
        component: component.clone(),
        unknown_counted: 0,
    };
    let result = runner.drive(&mut events, &source).await;
    if let Err(e) = &result {
        error!(pipeline = name, error = %e, "pipeline stopped");
        opts.health.set(&component, Some(e.to_string()));
    }
    // final commit (synchronous), then leave the group
    let commits: Vec<(TopicPartition, i64)> =
        runner.next.iter().map(|(tp, n)| (tp.clone(), *n)).collect();
    let stats = std::mem::take(&mut runner.stats);
    // dropping a producer flushes it: not on a runtime thread
    let dlq_producer = runner.dlq_producer.take();
    let alert_producer = runner.alert_producer.take();
    drop(runner);
    drop(events);
    let closing = source;
    let _ = tokio::task::spawn_blocking(move || {
        drop(dlq_producer);
        drop(alert_producer);
        if !commits.is_empty()
            && let Err(e) = closing.commit(&commits, true) {
                warn!(error = %e, "final offset commit failed (the lake's commit log still holds the position)");
            }
        match Arc::try_unwrap(closing) {
            Ok(source) => source.close(),
            Err(_) => warn!("the Kafka source is still shared at shutdown; not closing it"),
        }
    })
    .await;
    result.map(|()| stats)
}

struct Runner {
    p: Arc<Pipeline>,
    opts: RunOptions,
    chain: Chain,
    /// Anomaly state per partition.
    states: HashMap<TopicPartition, TpState>,
    /// What the resolver loaded at assignment.
    checkpoints: CheckpointMap,
    alert_producer: Option<Producer>,
    decoder: JsonDecoder,
    source: Arc<KafkaSource>,
    segments: HashMap<TopicPartition, Segment>,
    /// Next offset per partition after what every sink holds (the Kafka commit).
    next: HashMap<TopicPartition, i64>,
    /// What the resolver found at assignment, per partition.
    held_shared: HeldMap,
    /// Per partition, what each sink group holds (durably).
    held: HashMap<TopicPartition, Held>,
    warehouse: Option<Warehouse>,
    stats: RunStats,
    dlq_producer: Option<(String, Producer)>,
    component: String,
    /// Records with ignored unknown fields already counted in the metric.
    unknown_counted: u64,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Runner {
    fn name(&self) -> &str {
        &self.p.spec.name
    }

    async fn drive(
        &mut self,
        events: &mut tokio::sync::mpsc::Receiver<SourceEvent>,
        source: &Arc<KafkaSource>,
    ) -> Result<(), RunError> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut stopping = false;
        let shutdown = self.opts.shutdown.clone();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(SourceEvent::Chunk(chunk)) => self.on_chunk(chunk).await?,
                    Some(SourceEvent::Revoked(tps)) => {
                        for tp in tps {
                            if self.segments.remove(&tp).is_some() {
                                info!(pipeline = self.name(), topic = tp.0, partition = tp.1, "dropped the unpublished segment of a revoked partition");
                            }
                            self.next.remove(&tp);
                            self.held.remove(&tp);
                            self.states.remove(&tp);
                        }
                    }
                    Some(SourceEvent::Assigned(starts)) => {
                        // the runner continues each partition from where its sinks say
                        let shared = self.held_shared.lock().map(|h| h.clone()).unwrap_or_default();
                        let mut loaded = self.checkpoints.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
                        for (tp, start) in starts {
                            self.segments.remove(&tp);
                            if self.p.has_state() {
                                let c = loaded.remove(&tp).flatten().unwrap_or_default();
                                self.states.insert(tp.clone(), TpState {
                                    chain: c.chain,
                                    fresh: Vec::new(),
                                    pending: c.pending,
                                    notified: c.notified,
                                });
                            }
                            self.held.insert(tp.clone(), shared.get(&tp).copied().unwrap_or_default());
                            match start {
                                Some(n) => self.next.insert(tp, n),
                                None => self.next.remove(&tp),
                            };
                        }
                    }
                    Some(SourceEvent::Idle) | Some(SourceEvent::Stopped) => {
                        self.publish_all().await?;
                        let tps: Vec<TopicPartition> = self.states.keys().cloned().collect();
                        for tp in tps {
                            self.notify_pending(&tp).await;
                        }
                        return Ok(());
                    }
                    Some(SourceEvent::Fatal(message)) => {
                        // publish what was read correctly, then stop
                        self.publish_all().await?;
                        return Err(RunError::Source { pipeline: self.name().to_string(), message });
                    }
                    None => {
                        self.publish_all().await?;
                        return Err(RunError::Source {
                            pipeline: self.name().to_string(),
                            message: "the Kafka poll thread stopped unexpectedly".into(),
                        });
                    }
                },
                _ = tick.tick() => {
                    self.publish_due().await?;
                    if source.has_assignment() {
                        self.opts.health.set(&self.component, None);
                    } else if !stopping {
                        self.opts.health.set(&self.component, Some("waiting for a partition assignment (is the broker reachable?)".into()));
                    }
                }
                _ = shutdown.cancelled(), if !stopping => {
                    info!(pipeline = self.name(), "shutting down: flushing, publishing and committing");
                    stopping = true;
                    source.request_stop();
                }
            }
        }
    }

    fn has_lake(&self) -> bool {
        !self.p.sinks.is_empty() || self.p.dlq_table.is_some()
    }

    fn lake_part(&self, first: i64, seg_name: &str) -> Result<LakePart, RunError> {
        let meta = vec![
            ("ymera.pipeline".to_string(), self.name().to_string()),
            ("ymera.segment".to_string(), seg_name.to_string()),
        ];
        let lake_err = |e| RunError::Lake {
            pipeline: self.name().to_string(),
            source: e,
        };
        let writers = self
            .p
            .sinks
            .iter()
            .map(|s| TableWriter::new(s.table.clone(), meta.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(lake_err)?;
        let dlq = match &self.p.dlq_table {
            Some(t) => Some(TableWriter::new(t.clone(), meta).map_err(lake_err)?),
            None => None,
        };
        Ok(LakePart {
            first,
            writers,
            dlq,
        })
    }

    fn warehouse_part(&self, first: i64) -> WarehousePart {
        let n = self.p.warehouse_sinks.len();
        WarehousePart {
            first,
            batches: vec![Vec::new(); n],
            origins: vec![Vec::new(); n],
            rows: 0,
            bytes: 0,
        }
    }

    async fn on_chunk(&mut self, chunk: Chunk) -> Result<(), RunError> {
        let tp: TopicPartition = (chunk.topic.clone(), chunk.partition);
        let name = self.name().to_string();
        // a chunk of a newer assignment replaces whatever the old one left open
        if self
            .segments
            .get(&tp)
            .is_some_and(|s| s.epoch != chunk.epoch)
        {
            self.segments.remove(&tp);
            self.next.remove(&tp);
        }
        let expected = match self.segments.get(&tp) {
            Some(s) => Some(s.last + 1),
            None => self.next.get(&tp).copied(),
        };
        // Keep only records past what is held: a broker may hand a record out twice (after
        // a seek or a reconnect); a gap (compaction, transaction markers) is allowed.
        let mut next_ok = expected;
        let mut records = Vec::with_capacity(chunk.records.len());
        for r in chunk.records {
            if next_ok.is_some_and(|e| r.offset < e) {
                self.stats.skipped_duplicates += 1;
                continue;
            }
            if let Some(e) = next_ok.filter(|e| r.offset > *e) {
                warn!(
                    pipeline = name,
                    topic = tp.0,
                    partition = tp.1,
                    expected = e,
                    got = r.offset,
                    "offset gap in the source partition"
                );
            }
            next_ok = Some(r.offset + 1);
            records.push(r);
        }
        let received = records.len() as u64;
        if records.is_empty() {
            return Ok(());
        }
        metrics::counter!("ymera_component_received_events_total", "pipeline" => name.clone(), "component" => "source").increment(received);
        self.stats.records_in += received;
        Progress::add(&self.opts.progress.records_in, received);
        if !self.segments.contains_key(&tp) {
            self.segments.insert(
                tp.clone(),
                Segment {
                    epoch: chunk.epoch,
                    last: expected.unwrap_or(records[0].offset) - 1,
                    opened: Instant::now(),
                    lake: None,
                    warehouse: None,
                },
            );
        }
        // Which sink groups need which records: a group whose part is open needs all of
        // them; otherwise those at or after its recorded position (all, with none).
        let held = self.held.get(&tp).copied().unwrap_or_default();
        let (lake_open, wh_open) = {
            let seg = &self.segments[&tp];
            (seg.lake.is_some(), seg.warehouse.is_some())
        };
        let threshold = |present: bool, open: bool, pos: Option<i64>| match (present, open) {
            (false, _) => i64::MAX,
            (true, true) => i64::MIN,
            (true, false) => pos.unwrap_or(i64::MIN),
        };
        let lake_from = threshold(self.has_lake(), lake_open, held.lake);
        let wh_from = threshold(!self.p.warehouse_sinks.is_empty(), wh_open, held.warehouse);
        // at most three runs, cut where a group starts needing records
        let mut runs: Vec<(bool, bool, Vec<Record>)> = Vec::new();
        for r in records {
            let need = (r.offset >= lake_from, r.offset >= wh_from);
            match runs.last_mut() {
                Some((l, w, rs)) if (*l, *w) == need => rs.push(r),
                _ => runs.push((need.0, need.1, vec![r])),
            }
        }
        for (to_lake, to_wh, rs) in runs {
            let last = rs[rs.len() - 1].offset;
            // records every sink holds still feed stateful stages (from their checkpoint)
            if to_lake || to_wh || self.p.has_state() {
                self.process(&tp, rs, to_lake, to_wh, held).await?;
            }
            if let Some(seg) = self.segments.get_mut(&tp) {
                seg.last = last;
            }
        }
        if self.is_full(&tp) {
            self.publish(&tp).await?;
        }
        Ok(())
    }

    /// Decodes and transforms a run of records and adds the results to the parts of the
    /// sink groups that need them.
    async fn process(
        &mut self,
        tp: &TopicPartition,
        records: Vec<Record>,
        to_lake: bool,
        to_wh: bool,
        held: Held,
    ) -> Result<(), RunError> {
        let name = self.name().to_string();
        let (run_first, run_last) = (records[0].offset, records[records.len() - 1].offset);
        // open the parts this run starts (contiguous with what the group holds)
        let (need_lake_part, need_wh_part) = match self.segments.get(tp) {
            Some(seg) => (
                to_lake && seg.lake.is_none(),
                to_wh && seg.warehouse.is_none(),
            ),
            None => {
                return Err(RunError::Source {
                    pipeline: name,
                    message: "internal: segment vanished".into(),
                });
            }
        };
        if need_lake_part {
            let first = held.lake.unwrap_or(run_first).min(run_first);
            let part = self.lake_part(first, &format!("{}+{}+{first}", tp.0, tp.1))?;
            if let Some(seg) = self.segments.get_mut(tp) {
                seg.lake = Some(part);
            }
        }
        if need_wh_part {
            let first = held.warehouse.unwrap_or(run_first).min(run_first);
            let part = self.warehouse_part(first);
            if let Some(seg) = self.segments.get_mut(tp) {
                seg.warehouse = Some(part);
            }
        }

        // decode, strictly, record by record
        let mut letters = Vec::new();
        let mut rows_to_record = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let outcome = match &r.value {
                None => Err("record has no value (tombstone)".to_string()),
                Some(v) => self.decoder.push(v).map_err(|e| e.to_string()),
            };
            match outcome {
                Ok(()) => rows_to_record.push(i),
                Err(message) => letters.push((i, ErrorStage::Decode, message)),
            }
        }
        // the decoder counts since it was made; the metric counts what is new
        let ignored = self.decoder.unknown_fields_ignored();
        let batch = self.decoder.finish();
        if ignored > self.unknown_counted {
            metrics::counter!("ymera_unknown_fields_ignored_total", "pipeline" => name.clone())
                .increment(ignored - self.unknown_counted);
            self.unknown_counted = ignored;
        }
        let st = self.states.entry(tp.clone()).or_default();
        let (outputs, failed, alerts) = self
            .chain
            .run(&mut st.chain, batch, true)
            .await
            .map_err(|e| RunError::Transform(e, name.clone()))?;
        let warm = !to_lake && !to_wh;
        for a in alerts {
            let AlertEvent::Opened(alert) = a.event else {
                continue;
            };
            // only alerts with somewhere to go are tracked (the lake table has them all)
            if !self
                .chain
                .anomaly_stages()
                .any(|s| s.config.name == a.stage && !s.notify.is_empty())
            {
                continue;
            }
            let notice = Notice {
                pipeline: name.clone(),
                stage: a.stage,
                alert_id: alert.alert_id,
                key: alert.key,
                opened_at: alert.opened_at,
                peak_score: alert.peak_score,
            };
            if warm {
                // committed already (the sinks hold these records); notified unless known
                if !st.notified.contains(&notice.alert_id) {
                    st.pending.push(notice);
                }
            } else {
                st.fresh.push(notice);
            }
        }
        if warm {
            return Ok(());
        }
        // the source offset of each row of `input` that went on (rows that failed in a
        // stage are out of every output)
        let failed_rows: std::collections::HashSet<usize> = failed.iter().map(|f| f.row).collect();
        let input_offsets: Vec<i64> = rows_to_record
            .iter()
            .enumerate()
            .filter(|(row, _)| !failed_rows.contains(row))
            .map(|(_, &i)| records[i].offset)
            .collect();
        for f in failed {
            letters.push((
                rows_to_record[f.row],
                ErrorStage::Transform,
                f.error.to_string(),
            ));
        }
        letters.sort_by_key(|l| l.0);

        // bad records
        let mut dead = Vec::new();
        for (i, stage, message) in letters {
            let r = &records[i];
            metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => stage.as_str(), "error_type" => "bad_record").increment(1);
            match self.p.spec.source.on_bad_record {
                OnBadRecord::Fail => {
                    return Err(RunError::BadRecord {
                        pipeline: name,
                        topic: tp.0.clone(),
                        partition: tp.1,
                        offset: r.offset,
                        stage: stage.as_str(),
                        message,
                    });
                }
                OnBadRecord::Drop => {
                    warn!(
                        pipeline = name,
                        topic = tp.0,
                        partition = tp.1,
                        offset = r.offset,
                        error = message,
                        "dropping a bad record"
                    );
                    self.stats.dropped += 1;
                }
                OnBadRecord::Dlq => dead.push(DeadLetter {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    stage,
                    message,
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: r.offset,
                    pipeline: name.clone(),
                    failed_at: now_micros(),
                }),
            }
        }
        // dead letters of a lake DLQ table belong to the lake's part: a run the lake
        // already holds had its dead letters published with it
        if !dead.is_empty() && (to_lake || self.dlq_producer.is_some()) {
            self.dead_letter(&dead, tp).await?;
        }

        // into the open parts
        let lake_err = |e| RunError::Lake {
            pipeline: name.clone(),
            source: e,
        };
        let seg = self.segments.get_mut(tp).ok_or_else(|| RunError::Source {
            pipeline: name.clone(),
            message: "internal: segment vanished".into(),
        })?;
        if to_lake && let Some(part) = seg.lake.as_mut() {
            // encoding may run here when a row group fills: CPU work, let the runtime move
            // other tasks off this thread meanwhile
            tokio::task::block_in_place(|| {
                for (sink, writer) in self.p.sinks.iter().zip(part.writers.iter_mut()) {
                    if let Some(batch) = outputs.get(&sink.input) {
                        writer.write(batch)?;
                    }
                }
                Ok(())
            })
            .map_err(lake_err)?;
            if let (Some(w), false) = (part.dlq.as_mut(), dead.is_empty()) {
                let batch = crate::dlq::to_batch(&dead).map_err(|e| RunError::Source {
                    pipeline: name.clone(),
                    message: format!("internal: cannot build DLQ rows: {e}"),
                })?;
                w.write(&batch).map_err(lake_err)?;
            }
        }
        if to_wh && let Some(part) = seg.warehouse.as_mut() {
            for (i, sink) in self.p.warehouse_sinks.iter().enumerate() {
                let Some(batch) = outputs.get(&sink.input) else {
                    continue;
                };
                if batch.num_rows() == 0 {
                    continue;
                }
                part.rows += batch.num_rows() as u64;
                part.bytes += batch.get_array_memory_size() as u64;
                part.batches[i].push(batch.clone());
                part.origins[i].push(ymera_warehouse::Origin {
                    first: run_first,
                    last: run_last,
                    rows: (sink.input == INPUT).then(|| input_offsets.clone()),
                });
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        dead: &[DeadLetter],
        tp: &TopicPartition,
    ) -> Result<(), RunError> {
        let name = self.name().to_string();
        self.stats.dead_lettered += dead.len() as u64;
        Progress::add(&self.opts.progress.dead_lettered, dead.len() as u64);
        metrics::counter!("ymera_dlq_events_total", "pipeline" => name.clone())
            .increment(dead.len() as u64);
        for d in dead {
            warn!(
                pipeline = name,
                topic = tp.0,
                partition = tp.1,
                offset = d.offset,
                stage = d.stage.as_str(),
                error = d.message,
                "record dead-lettered"
            );
        }
        let Some((topic, producer)) = &self.dlq_producer else {
            return Ok(());
        };
        for d in dead {
            let headers = d.headers();
            let hdrs: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let mut backoff = Duration::from_millis(200);
            loop {
                match producer
                    .send(topic, d.key.as_deref(), d.value.as_deref(), &hdrs)
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        warn!(pipeline = name, dlq_topic = topic, error = %e, "cannot write to the DLQ topic; retrying");
                        self.opts.health.set(
                            &self.component,
                            Some(format!("DLQ topic `{topic}` unwritable: {e}")),
                        );
                        if self.opts.shutdown.is_cancelled() && backoff > Duration::from_secs(10) {
                            return Err(RunError::Source {
                                pipeline: name,
                                message: format!("DLQ topic `{topic}` unwritable: {e}"),
                            });
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        Ok(())
    }

    fn is_full(&self, tp: &TopicPartition) -> bool {
        let Some(seg) = self.segments.get(tp) else {
            return false;
        };
        let lake_full =
            seg.lake.as_ref().is_some_and(|part| {
                self.p.sinks.iter().zip(&part.writers).any(|(s, w)| {
                    w.rows() >= s.rolling.max_rows || w.bytes() >= s.rolling.max_bytes.0
                })
            });
        let wh_full = seg.warehouse.as_ref().is_some_and(|part| {
            self.p
                .warehouse_sinks
                .iter()
                .any(|s| part.rows >= s.rolling.max_rows || part.bytes >= s.rolling.max_bytes.0)
        });
        lake_full || wh_full || seg.opened.elapsed() >= self.max_interval()
    }

    fn max_interval(&self) -> Duration {
        self.p
            .sinks
            .iter()
            .map(|s| s.rolling.max_interval)
            .chain(
                self.p
                    .warehouse_sinks
                    .iter()
                    .map(|s| s.rolling.max_interval),
            )
            .min()
            .unwrap_or(Duration::from_secs(60))
    }

    async fn publish_due(&mut self) -> Result<(), RunError> {
        let due: Vec<TopicPartition> = self
            .segments
            .keys()
            .filter(|tp| self.is_full(tp))
            .cloned()
            .collect();
        for tp in due {
            self.publish(&tp).await?;
        }
        Ok(())
    }

    async fn publish_all(&mut self) -> Result<(), RunError> {
        let all: Vec<TopicPartition> = self.segments.keys().cloned().collect();
        for tp in all {
            self.publish(&tp).await?;
        }
        Ok(())
    }

    /// The lowest position over the pipeline's sink groups: where the source resumes and
    /// what Kafka may be told (`None` while a group holds nothing of the partition).
    fn low_water(&self, tp: &TopicPartition) -> Option<i64> {
        let held = self.held.get(tp).copied().unwrap_or_default();
        let mut low = Some(i64::MAX);
        if self.has_lake() {
            low = low.zip(held.lake).map(|(a, b)| a.min(b));
        }
        if !self.p.warehouse_sinks.is_empty() {
            low = low.zip(held.warehouse).map(|(a, b)| a.min(b));
        }
        low.filter(|l| *l != i64::MAX)
    }

    /// Publishes a partition's open segment — the warehouse part (rows + offsets in one
    /// transaction), then the lake part (files, then commit record) — and commits the
    /// lowest position over the sinks to Kafka. Transient errors are retried with backoff.
    /// Publishes a partition's open segment, as one trace (a root span `publish`: the
    /// checkpoint, the warehouse and lake commits, notifications and the offset commit).
    async fn publish(&mut self, tp: &TopicPartition) -> Result<(), RunError> {
        let Some(seg) = self.segments.get(tp) else {
            return Ok(());
        };
        let span = tracing::info_span!(
            parent: None,
            "publish",
            pipeline = %self.p.spec.name,
            topic = %tp.0,
            partition = tp.1,
            last_offset = seg.last,
        );
        self.publish_segment(tp).instrument(span).await
    }

    async fn publish_segment(&mut self, tp: &TopicPartition) -> Result<(), RunError> {
        let Some(mut seg) = self.segments.remove(tp) else {
            return Ok(());
        };
        let started = Instant::now();
        let mut published = false;
        let will_publish = seg.warehouse.as_ref().is_some_and(|p| seg.last >= p.first)
            || seg.lake.as_ref().is_some_and(|p| seg.last >= p.first);
        if will_publish && self.p.has_state() {
            self.save_checkpoint(tp, seg.last + 1).await?;
        }
        if let Some(part) = seg.warehouse.take().filter(|p| seg.last >= p.first) {
            if !self
                .publish_warehouse(tp, seg.epoch, seg.last, part)
                .await?
            {
                return Ok(());
            }
            published = true;
        }
        if let Some(part) = seg.lake.take().filter(|p| seg.last >= p.first) {
            if !self.publish_lake(tp, seg.epoch, seg.last, part).await? {
                return Ok(());
            }
            published = true;
        }
        if !published {
            return Ok(());
        }
        if let Some(st) = self.states.get_mut(tp) {
            let fresh = std::mem::take(&mut st.fresh);
            st.pending.extend(fresh);
        }
        self.notify_pending(tp).await;
        let name = self.name().to_string();
        self.stats.last_commit_at = Some(Instant::now());
        if let Some(next) = self.low_water(tp) {
            self.next.insert(tp.clone(), next);
            if let Err(e) = self.source.commit(&[(tp.clone(), next)], false) {
                warn!(pipeline = name, topic = tp.0, partition = tp.1, error = %e, "offset commit failed (the sinks hold the position)");
            }
        }
        metrics::histogram!("ymera_batch_commit_seconds", "pipeline" => name)
            .record(started.elapsed().as_secs_f64());
        self.opts.health.set(&self.component, None);
        Ok(())
    }

    /// Writes the partition's anomaly state at `next` (before its sinks commit), retrying
    /// external errors like a publication.
    async fn save_checkpoint(&mut self, tp: &TopicPartition, next: i64) -> Result<(), RunError> {
        let name = self.name().to_string();
        let st = self.states.entry(tp.clone()).or_default();
        let c = Checkpoint {
            topic: tp.0.clone(),
            partition: tp.1,
            next_offset: next,
            chain: st.chain.clone(),
            pending: st.pending.iter().chain(&st.fresh).cloned().collect(),
            notified: st.notified.clone(),
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            match checkpoint::save(&self.opts.lake, &name, &c).await {
                Ok(()) => return Ok(()),
                Err(e) if e.class().retry() == ymera_common::Retry::Yes => {
                    if !self.backoff(&mut backoff, "lake", e.to_string()).await {
                        return Err(RunError::Lake {
                            pipeline: name,
                            source: e,
                        });
                    }
                }
                Err(e) => {
                    return Err(RunError::Lake {
                        pipeline: name,
                        source: e,
                    });
                }
            }
        }
    }

    /// Sends the partition's committed, not yet notified alerts to their stage's topic and
    /// webhook. A failed notice stays pending and is tried again after the next commit.
    async fn notify_pending(&mut self, tp: &TopicPartition) {
        let name = self.name().to_string();
        let Some(st) = self.states.get_mut(tp) else {
            return;
        };
        if st.pending.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        for n in std::mem::take(&mut st.pending) {
            if st.notified.contains(&n.alert_id) {
                continue;
            }
            let Some(stage) = self
                .chain
                .anomaly_stages()
                .find(|a| a.config.name == n.stage)
            else {
                continue;
            };
            let body = n.body();
            let mut ok = true;
            if let (Some(topic), Some(producer)) = (&stage.notify.topic, &self.alert_producer) {
                let sent = tokio::time::timeout(
                    Duration::from_secs(30),
                    producer.send(topic, Some(n.key.as_bytes()), Some(&body), &[]),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    let error = match sent {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    warn!(
                        pipeline = name,
                        alert_topic = topic,
                        alert_id = n.alert_id,
                        error,
                        "cannot send an alert to its topic; retrying after the next commit"
                    );
                    ok = false;
                }
            }
            if let (true, Some((url, timeout))) = (ok, &stage.notify.webhook)
                && let Err(error) = crate::notify::post(url, &body, *timeout).await
            {
                warn!(
                    pipeline = name,
                    alert_id = n.alert_id,
                    error,
                    "cannot post an alert to its webhook; retrying after the next commit"
                );
                ok = false;
            }
            if ok {
                if !stage.notify.is_empty() {
                    info!(
                        pipeline = name,
                        stage = n.stage,
                        alert_id = n.alert_id,
                        key = n.key,
                        "alert notified"
                    );
                }
                st.notified.push_back(n.alert_id.clone());
                while st.notified.len() > checkpoint::NOTIFIED {
                    st.notified.pop_front();
                }
            } else {
                keep.push(n);
            }
        }
        st.pending = keep;
    }

    /// Waits before retrying an external error; false on shutdown once backoff is long.
    fn backoff(
        &self,
        backoff: &mut Duration,
        what: &str,
        message: String,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        warn!(pipeline = self.name(), error = message, retry_in = ?*backoff, "cannot write to the {what}; consumption paused, offsets not committed");
        self.opts.health.set(
            &self.component,
            Some(format!("{what} unwritable: {message}")),
        );
        let (wait, shutdown) = (*backoff, self.opts.shutdown.clone());
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
        async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => true,
                _ = shutdown.cancelled(), if wait >= Duration::from_secs(5) => false,
            }
        }
    }

    /// Returns false when the partition is no longer owned (the segment is dropped).
    async fn publish_warehouse(
        &mut self,
        tp: &TopicPartition,
        epoch: u64,
        last: i64,
        part: WarehousePart,
    ) -> Result<bool, RunError> {
        let name = self.name().to_string();
        let Some(wh) = self.warehouse.clone() else {
            return Err(RunError::Source {
                pipeline: name,
                message: "internal: warehouse rows without a warehouse".into(),
            });
        };
        let writes = self
            .p
            .warehouse_sinks
            .iter()
            .zip(part.batches.into_iter().zip(part.origins))
            .map(|(s, (batches, origins))| ymera_warehouse::TableWrite {
                table: s.table.clone(),
                mode: s.mode.clone(),
                batches,
                origins,
            })
            .collect();
        let commit = ymera_warehouse::Commit {
            pipeline: name.clone(),
            topic: tp.0.clone(),
            partition: tp.1,
            first: part.first,
            next: last + 1,
            writes,
            on_reject: match self.p.spec.source.on_bad_record {
                OnBadRecord::Dlq => ymera_warehouse::OnReject::DeadLetter,
                OnBadRecord::Drop => ymera_warehouse::OnReject::Skip,
                OnBadRecord::Fail => ymera_warehouse::OnReject::Abort,
            },
        };
        let fence = self.source.fence();
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(guard) = fence.hold(tp, epoch).await else {
                info!(
                    pipeline = name,
                    topic = tp.0,
                    partition = tp.1,
                    "partition no longer owned; segment dropped"
                );
                return Ok(false);
            };
            let outcome = wh.commit(&commit).await;
            drop(guard);
            match outcome {
                Ok(done) => {
                    for r in &done.rejected {
                        metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => "sink", "error_type" => "constraint").increment(1);
                        warn!(
                            pipeline = name,
                            topic = tp.0,
                            partition = tp.1,
                            error = r.message,
                            "row refused by the warehouse: {}",
                            if commit.on_reject == ymera_warehouse::OnReject::Skip {
                                "dropped (on_bad_record: drop)"
                            } else {
                                "dead-lettered in _ymera_dead_letters"
                            }
                        );
                    }
                    if commit.on_reject == ymera_warehouse::OnReject::DeadLetter {
                        let n = done.rejected.len() as u64;
                        self.stats.dead_lettered += n;
                        Progress::add(&self.opts.progress.dead_lettered, n);
                        metrics::counter!("ymera_dlq_events_total", "pipeline" => name.clone())
                            .increment(n);
                    } else {
                        self.stats.dropped += done.rejected.len() as u64;
                    }
                    metrics::counter!("ymera_component_sent_events_total", "pipeline" => name.clone(), "component" => "warehouse").increment(done.rows);
                    *self
                        .stats
                        .rows_written
                        .entry("warehouse".into())
                        .or_insert(0) += done.rows;
                    self.held.entry(tp.clone()).or_default().warehouse = Some(last + 1);
                    return Ok(true);
                }
                Err(ymera_warehouse::WarehouseError::Fenced(m)) => {
                    // Our own earlier attempt may have committed with its reply lost: then
                    // the stored position is exactly this segment's end.
                    let stored = wh
                        .read_positions(&name)
                        .await
                        .ok()
                        .and_then(|p| p.get(tp).copied());
                    if stored == Some(last + 1) {
                        info!(
                            pipeline = name,
                            topic = tp.0,
                            partition = tp.1,
                            "the warehouse already holds this segment (an earlier attempt committed)"
                        );
                        self.held.entry(tp.clone()).or_default().warehouse = Some(last + 1);
                        return Ok(true);
                    }
                    // another writer moved it: stop, so that a restart resolves afresh
                    return Err(RunError::Warehouse {
                        pipeline: name,
                        source: ymera_warehouse::WarehouseError::Fenced(m),
                    });
                }
                Err(e) if e.class().retry() == ymera_common::Retry::Yes => {
                    metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => "sink", "error_type" => "warehouse_write").increment(1);
                    if !self.backoff(&mut backoff, "warehouse", e.to_string()).await {
                        return Err(RunError::Warehouse {
                            pipeline: name,
                            source: e,
                        });
                    }
                }
                Err(e) => {
                    return Err(RunError::Warehouse {
                        pipeline: name,
                        source: e,
                    });
                }
            }
        }
    }

    /// Returns false when the partition is no longer owned (the segment is dropped).
    async fn publish_lake(
        &mut self,
        tp: &TopicPartition,
        epoch: u64,
        last: i64,
        part: LakePart,
    ) -> Result<bool, RunError> {
        let name = self.name().to_string();
        let id = SegmentId {
            topic: tp.0.clone(),
            partition: tp.1,
            first: part.first,
            last,
        };
        let file_name = id.file_name();
        let mut files = Vec::new();
        let mut rows_by_table: Vec<(String, u64, u64)> = Vec::new();
        // Parquet encoding and compression are CPU work: off the runtime threads
        let writers: Vec<TableWriter> = part.writers.into_iter().chain(part.dlq).collect();
        let finished = tokio::task::spawn_blocking(move || {
            writers
                .into_iter()
                .map(|w| {
                    let table = w.table().to_string();
                    w.finish(&file_name).map(|done| (table, done))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| RunError::Source {
            pipeline: name.clone(),
            message: format!("internal: encoding task failed: {e}"),
        })?
        .map_err(|e| RunError::Lake {
            pipeline: name.clone(),
            source: e,
        })?;
        for (table, done) in finished {
            rows_by_table.push((table, done.iter().map(|f| f.2).sum(), done.len() as u64));
            files.extend(done);
        }
        let fence = self.source.fence();
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(guard) = fence.hold(tp, epoch).await else {
                info!(pipeline = name, segment = %id, "partition no longer owned; segment dropped");
                return Ok(false);
            };
            let outcome = ledger::publish_segment(&self.opts.lake, &name, &id, files.clone()).await;
            drop(guard);
            match outcome {
                Ok(record) => {
                    let n_files = record.files.len() as u64;
                    self.stats.files_written += n_files;
                    Progress::add(&self.opts.progress.files_written, n_files);
                    for (table, rows, n) in rows_by_table {
                        metrics::counter!("ymera_component_sent_events_total", "pipeline" => name.clone(), "component" => table.clone()).increment(rows);
                        metrics::counter!("ymera_lake_files_written_total", "pipeline" => name.clone(), "table" => table.clone()).increment(n);
                        *self.stats.rows_written.entry(table).or_insert(0) += rows;
                    }
                    self.held.entry(tp.clone()).or_default().lake = Some(last + 1);
                    return Ok(true);
                }
                Err(e) if e.class().retry() == ymera_common::Retry::Yes => {
                    metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => "sink", "error_type" => "lake_write").increment(1);
                    if !self.backoff(&mut backoff, "lake", e.to_string()).await {
                        return Err(RunError::Lake {
                            pipeline: name,
                            source: e,
                        });
                    }
                }
                Err(e) => {
                    return Err(RunError::Lake {
                        pipeline: name,
                        source: e,
                    });
                }
            }
        }
    }
}

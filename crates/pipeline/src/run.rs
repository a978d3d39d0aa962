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
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use ymera_common::health::Health;
use ymera_ingest::decode::{JsonDecoder, UnknownFields};
use ymera_ingest::kafka::{
    Chunk, KafkaSource, Resolver, SourceEvent, SourceSettings, StartFrom, TopicPartition,
};
use ymera_ingest::produce::Producer;
use ymera_lake::{Lake, SegmentId, TableWriter, ledger};
use ymera_transform::Transform;

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
    pub stop_when_idle: Option<Duration>,
    pub shutdown: CancellationToken,
    pub health: Arc<Health>,
    /// Live totals over every pipeline of the process (for progress displays).
    pub progress: Arc<Progress>,
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

/// One partition's open segment: the rows read since the last publication.
struct Segment {
    epoch: u64,
    first: i64,
    last: i64,
    opened: Instant,
    writers: Vec<TableWriter>,
    dlq: Option<TableWriter>,
}

struct LakeResolver {
    lake: Lake,
    pipeline: String,
    tables: Vec<String>,
    handle: tokio::runtime::Handle,
}

impl Resolver for LakeResolver {
    fn resolve(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, String> {
        self.handle.block_on(async {
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
            Ok(partitions
                .iter()
                .map(|tp| (tp.clone(), positions.get(tp).copied()))
                .collect())
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
    };
    let resolver = Arc::new(LakeResolver {
        lake: opts.lake.clone(),
        pipeline: name.clone(),
        tables: p.tables(),
        handle: tokio::runtime::Handle::current(),
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
        transform: p.transform(),
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
    drop(runner);
    drop(events);
    let closing = source;
    let _ = tokio::task::spawn_blocking(move || {
        drop(dlq_producer);
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
    transform: Transform,
    decoder: JsonDecoder,
    source: Arc<KafkaSource>,
    segments: HashMap<TopicPartition, Segment>,
    /// Next offset per partition after what is durable (committed to the lake).
    next: HashMap<TopicPartition, i64>,
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
                        }
                    }
                    Some(SourceEvent::Assigned(starts)) => {
                        // the runner continues each partition from where the lake says
                        for (tp, start) in starts {
                            self.segments.remove(&tp);
                            match start {
                                Some(n) => self.next.insert(tp, n),
                                None => self.next.remove(&tp),
                            };
                        }
                    }
                    Some(SourceEvent::Idle) | Some(SourceEvent::Stopped) => {
                        self.publish_all().await?;
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

    fn new_segment(&self, epoch: u64, first: i64, seg_name: &str) -> Result<Segment, RunError> {
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
        Ok(Segment {
            epoch,
            first,
            last: first - 1,
            opened: Instant::now(),
            writers,
            dlq,
        })
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
        // A segment starts where the previous one ended (or at the first record of a fresh
        // partition), so commit records stay contiguous across offsets the broker skips.
        let first = expected.unwrap_or(records[0].offset);
        let last = records[records.len() - 1].offset;
        if !self.segments.contains_key(&tp) {
            let seg =
                self.new_segment(chunk.epoch, first, &format!("{}+{}+{first}", tp.0, tp.1))?;
            self.segments.insert(tp.clone(), seg);
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
        let (outputs, failed) = self
            .transform
            .run_isolating(batch)
            .await
            .map_err(|e| RunError::Transform(e, name.clone()))?;
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
        if !dead.is_empty() {
            self.dead_letter(&dead, &tp).await?;
        }

        // into the open segment
        let lake_err = |e| RunError::Lake {
            pipeline: name.clone(),
            source: e,
        };
        let seg = self.segments.get_mut(&tp).ok_or_else(|| RunError::Source {
            pipeline: name.clone(),
            message: "internal: segment vanished".into(),
        })?;
        // encoding may run here when a row group fills: CPU work, let the runtime move
        // other tasks off this thread meanwhile
        tokio::task::block_in_place(|| {
            for (sink, writer) in self.p.sinks.iter().zip(seg.writers.iter_mut()) {
                if let Some(batch) = outputs.get(&sink.input) {
                    writer.write(batch)?;
                }
            }
            Ok(())
        })
        .map_err(lake_err)?;
        if let (Some(w), false) = (seg.dlq.as_mut(), dead.is_empty()) {
            let batch = crate::dlq::to_batch(&dead).map_err(|e| RunError::Source {
                pipeline: name.clone(),
                message: format!("internal: cannot build DLQ rows: {e}"),
            })?;
            w.write(&batch).map_err(lake_err)?;
        }
        seg.last = last;
        if self.is_full(&tp) {
            self.publish(&tp).await?;
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
        self.p
            .sinks
            .iter()
            .zip(&seg.writers)
            .any(|(s, w)| w.rows() >= s.rolling.max_rows || w.bytes() >= s.rolling.max_bytes.0)
            || seg.opened.elapsed() >= self.max_interval()
    }

    fn max_interval(&self) -> Duration {
        self.p
            .sinks
            .iter()
            .map(|s| s.rolling.max_interval)
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

    /// Publishes a partition's open segment (files, then commit record) and commits the
    /// Kafka offset after it. Transient lake errors are retried with backoff.
    async fn publish(&mut self, tp: &TopicPartition) -> Result<(), RunError> {
        let Some(seg) = self.segments.remove(tp) else {
            return Ok(());
        };
        if seg.last < seg.first {
            return Ok(());
        }
        let name = self.name().to_string();
        let started = Instant::now();
        let id = SegmentId {
            topic: tp.0.clone(),
            partition: tp.1,
            first: seg.first,
            last: seg.last,
        };
        let file_name = id.file_name();
        let mut files = Vec::new();
        let mut rows_by_table: Vec<(String, u64, u64)> = Vec::new();
        // Parquet encoding and compression are CPU work: off the runtime threads
        let writers: Vec<TableWriter> = seg.writers.into_iter().chain(seg.dlq).collect();
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
            let Some(guard) = fence.hold(tp, seg.epoch).await else {
                info!(pipeline = name, segment = %id, "partition no longer owned; segment dropped");
                return Ok(());
            };
            match ledger::publish_segment(&self.opts.lake, &name, &id, files.clone()).await {
                Ok(record) => {
                    drop(guard);
                    let n_files = record.files.len() as u64;
                    self.stats.files_written += n_files;
                    Progress::add(&self.opts.progress.files_written, n_files);
                    self.stats.last_commit_at = Some(Instant::now());
                    for (table, rows, n) in rows_by_table {
                        metrics::counter!("ymera_component_sent_events_total", "pipeline" => name.clone(), "component" => table.clone()).increment(rows);
                        metrics::counter!("ymera_lake_files_written_total", "pipeline" => name.clone(), "table" => table.clone()).increment(n);
                        *self.stats.rows_written.entry(table).or_insert(0) += rows;
                    }
                    self.next.insert(tp.clone(), id.last + 1);
                    if let Err(e) = self.source.commit(&[(tp.clone(), id.last + 1)], false) {
                        warn!(pipeline = name, topic = tp.0, partition = tp.1, error = %e, "offset commit failed (the lake holds the position)");
                    }
                    metrics::histogram!("ymera_batch_commit_seconds", "pipeline" => name.clone())
                        .record(started.elapsed().as_secs_f64());
                    self.opts.health.set(&self.component, None);
                    return Ok(());
                }
                Err(e) if e.class().retry() == ymera_common::Retry::Yes => {
                    drop(guard);
                    metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => "sink", "error_type" => "lake_write").increment(1);
                    warn!(pipeline = name, segment = %id, error = %e, retry_in = ?backoff, "cannot publish to the lake; consumption paused, offsets not committed");
                    self.opts
                        .health
                        .set(&self.component, Some(format!("lake unwritable: {e}")));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.opts.shutdown.cancelled(), if backoff >= Duration::from_secs(5) => {
                            return Err(RunError::Lake { pipeline: name, source: e });
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
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

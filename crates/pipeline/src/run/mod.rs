//! The runtime of one pipeline: Kafka chunks -> strict decode -> SQL stages -> open
//! segments -> publication -> commit record -> Kafka commit.
//!
//! Invariants:
//! - a partition's segment is published only while this process owns the partition under
//!   the epoch the records were read in (the source's fence);
//! - the Kafka offset committed for a partition is always the next offset after a
//!   segment whose commit record is durable;
//! - a failed publication is retried with backoff and consumption waits meanwhile.

mod alerts;
mod compact;
mod process;
mod publish;
mod resolver;
mod segment;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use ymera_common::health::Health;
use ymera_ingest::decode::{JsonDecoder, UnknownFields};
use ymera_ingest::kafka::{
    Fence, KafkaSource, SourceEvent, SourceSettings, StartFrom, TopicPartition,
};
use ymera_ingest::produce::Producer;
use ymera_lake::Lake;
use ymera_warehouse::Warehouse;

use crate::chain::Chain;
use crate::spec::{Start, UnknownFieldsSpec};
use crate::validate::Pipeline;
use alerts::TpState;
use resolver::{CheckpointMap, Held, HeldMap, SinkResolver, Trouble};
use segment::Segment;

pub use compact::Compaction;

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
    /// Partitions quarantined at the end of the run, with why.
    pub quarantined: Vec<(TopicPartition, String)>,
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
    /// Background compaction of the pipeline's tables (`None`: off).
    pub compaction: Option<Compaction>,
    /// The process's memory budget, shared by its pipelines (`None`: none).
    pub memory: Option<Arc<MemoryBudget>>,
}

/// One budget per process (`run.memory_limit`) over what its pipelines hold in memory:
/// open segments (the encoded files and the row groups being built, of every sink, the
/// DLQ table included) and, through librdkafka's `queued.max.messages.kbytes`, fetched
/// records. A runner whose commit would take the total past the limit publishes its
/// largest open segments early, so memory stays near the limit however many partitions
/// and sinks there are; fetching pauses meanwhile, since the runner does not read.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    held: std::sync::atomic::AtomicU64,
    /// Runners sharing it: one over its fair share (limit / runners) publishes early, one
    /// under it does not (another pipeline stuck in retries does not make the others write
    /// tiny files).
    runners: std::sync::atomic::AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget {
            limit,
            held: std::sync::atomic::AtomicU64::new(0),
            runners: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// What one runner may hold before it must publish early, with the total over the
    /// limit.
    fn fair_share(&self) -> u64 {
        self.limit
            / self
                .runners
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Open segments' bytes over every pipeline of the process.
    pub fn held(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves one runner's share from `was` to `now`.
    fn update(&self, was: u64, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if now >= was {
            self.held.fetch_add(now - was, Relaxed);
        } else {
            self.held.fetch_sub(was - now, Relaxed);
        }
    }

    /// librdkafka's prefetch queue per partition (`queued.max.messages.kbytes`) under
    /// this budget: a sixty-fourth of it, between 1 MiB and librdkafka's default 64 MiB.
    pub fn fetch_queue_kbytes(&self) -> u64 {
        (self.limit / 1024 / 64).clamp(1024, 65_536)
    }
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

/// Runs a pipeline until shutdown, idleness (`stop_when_idle`) or an error.
pub async fn run(
    p: Arc<Pipeline>,
    brokers: String,
    opts: RunOptions,
) -> Result<RunStats, RunError> {
    let name = p.spec.name.clone();
    let component = format!("pipeline:{name}");
    opts.health.set(&component, Some("starting".into()));
    // present from the start, at zero, so a pipeline that has read nothing yet shows it
    metrics::counter!("ymera_component_received_events_total", "pipeline" => name.clone(), "component" => "source").increment(0);
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
        client: {
            let mut client = src.kafka.client.clone();
            if let Some(m) = &opts.memory {
                // what librdkafka prefetches per partition, under the budget (the
                // pipeline's own `client` setting wins)
                client
                    .entry("queued.max.messages.kbytes".into())
                    .or_insert_with(|| m.fetch_queue_kbytes().to_string());
            }
            client
        },
        max_records: p.spec.batch.max_records,
        max_bytes: p.spec.batch.max_bytes.0 as usize,
        max_wait: p.spec.batch.max_wait,
        // an eighth of the budget for records read and not yet taken by the runner
        max_buffered: opts
            .memory
            .as_ref()
            .map_or(usize::MAX, |m| (m.limit() / 8).max(1 << 20) as usize),
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
    let trouble: Trouble = Arc::default();
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
    let notifier = if chain.anomaly_stages().any(|a| !a.notify.is_empty()) {
        Some(
            crate::notify::Notifier::start(&name, alert_producer.clone()).map_err(|message| {
                RunError::Source {
                    pipeline: name.clone(),
                    message,
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
        trouble: trouble.clone(),
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
    // the replica that owns the lead partition compacts (compact.rs)
    let lead = compact::lead_partition(&src.kafka.topics)
        .map(|tp| (tp, Arc::new(std::sync::atomic::AtomicBool::new(false))));
    let _compactor = match (&opts.compaction, &lead) {
        (Some(how), Some((_, leader))) => {
            match compact::Compactor::start(
                name.clone(),
                opts.lake.clone(),
                p.tables(),
                how.clone(),
                leader.clone(),
            ) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(pipeline = name, error = %e, "cannot start background compaction");
                    None
                }
            }
        }
        _ => None,
    };
    let mut runner = Runner::new(
        p.clone(),
        chain,
        opts.clone(),
        source.clone(),
        warehouse,
        (held, checkpoints, trouble),
        alert_producer,
        notifier,
        dlq_producer,
    );
    runner.lead = lead;
    if let Some(m) = &runner.opts.memory {
        m.runners.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let result = runner.drive(&mut events).await;
    // what this runner still holds is dropped with it
    if let Some(m) = &runner.opts.memory {
        m.update(runner.held_bytes, 0);
        m.runners.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        runner.held_bytes = 0;
    }
    if let Err(e) = &result {
        error!(pipeline = name, error = %e, "pipeline stopped");
        opts.health.set(&component, Some(e.to_string()));
    }
    // final commit (synchronous), then leave the group
    let commits: Vec<(TopicPartition, i64)> = runner
        .parts
        .iter()
        .filter_map(|(tp, p)| Some((tp.clone(), p.next?)))
        .collect();
    let stats = std::mem::take(&mut runner.stats);
    // deliveries still in flight after an error stop here (their alerts stay pending in
    // the checkpoints, notified after the restart)
    if let Some(mut n) = runner.notifier.take() {
        n.close(tokio::time::Instant::now() + Duration::from_secs(1))
            .await;
    }
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

/// Everything the runner keeps of one assigned partition.
#[derive(Default)]
struct Partition {
    /// The rows read since the last publication.
    segment: Option<Segment>,
    /// The next offset after what every sink holds (the Kafka commit); `None` until known.
    next: Option<i64>,
    /// What each sink group holds durably.
    held: Held,
    /// Anomaly-stage state and the alerts to notify.
    anomaly: TpState,
}

/// What the runner asks of its source besides events: the fence, offset commits and a
/// stop (`KafkaSource`; a scripted source in the unit tests).
trait SourceHandle: Send + Sync {
    fn fence(&self) -> Arc<Fence>;
    fn commit(&self, offsets: &[(TopicPartition, i64)], sync: bool) -> Result<(), String>;
    fn has_assignment(&self) -> bool;
    fn request_stop(&self);
}

impl SourceHandle for KafkaSource {
    fn fence(&self) -> Arc<Fence> {
        KafkaSource::fence(self)
    }

    fn commit(&self, offsets: &[(TopicPartition, i64)], sync: bool) -> Result<(), String> {
        KafkaSource::commit(self, offsets, sync).map_err(|e| e.to_string())
    }

    fn has_assignment(&self) -> bool {
        KafkaSource::has_assignment(self)
    }

    fn request_stop(&self) {
        KafkaSource::request_stop(self)
    }
}

struct Runner {
    p: Arc<Pipeline>,
    opts: RunOptions,
    chain: Chain,
    /// What the runner keeps of each assigned partition.
    parts: HashMap<TopicPartition, Partition>,
    /// What the resolver loaded at assignment.
    checkpoints: CheckpointMap,
    alert_producer: Option<Producer>,
    /// Delivers committed alerts off the publish path (alerts.rs).
    notifier: Option<crate::notify::Notifier>,
    /// Assignments handled so far (each partition's state is tagged with its own).
    assignments: u64,
    /// This runner's share of the process's memory budget last reported to it.
    held_bytes: u64,
    decoder: JsonDecoder,
    source: Arc<dyn SourceHandle>,
    /// What the resolver found at assignment, per partition.
    held_shared: HeldMap,
    /// Why the resolver cannot resolve the assignment, while it cannot.
    trouble: Trouble,
    warehouse: Option<Warehouse>,
    /// The Delta tables this runner commits to.
    tables: ymera_lake::delta::Tables,
    stats: RunStats,
    dlq_producer: Option<(String, Producer)>,
    component: String,
    /// Records with ignored unknown fields already counted in the metric.
    unknown_counted: u64,
    /// The partition whose owner compacts the tables, and whether this runner owns it.
    lead: Option<(TopicPartition, Arc<std::sync::atomic::AtomicBool>)>,
}

impl Runner {
    /// A runner of `p` (its stage chain `chain`) fed by `source`; `shared` is what its
    /// resolver fills at assignment.
    fn new(
        p: Arc<Pipeline>,
        chain: Chain,
        opts: RunOptions,
        source: Arc<dyn SourceHandle>,
        warehouse: Option<Warehouse>,
        shared: (HeldMap, CheckpointMap, Trouble),
        alert_producer: Option<Producer>,
        notifier: Option<crate::notify::Notifier>,
        dlq_producer: Option<(String, Producer)>,
    ) -> Runner {
        let lake = opts.lake.clone();
        let unknown = match p.spec.source.unknown_fields {
            UnknownFieldsSpec::Ignore => UnknownFields::Ignore,
            UnknownFieldsSpec::Dlq => UnknownFields::Dlq,
        };
        Runner {
            decoder: JsonDecoder::new(&p.fields, unknown),
            chain,
            component: format!("pipeline:{}", p.spec.name),
            p,
            opts,
            parts: HashMap::new(),
            checkpoints: shared.1,
            alert_producer,
            notifier,
            assignments: 0,
            held_bytes: 0,
            source,
            held_shared: shared.0,
            trouble: shared.2,
            warehouse,
            tables: ymera_lake::delta::Tables::new(lake),
            stats: RunStats::default(),
            dlq_producer,
            unknown_counted: 0,
            lead: None,
        }
    }

    /// Stops on a partition that cannot be read on without losing or repeating records:
    /// what was read before is published, and readiness and the metric
    /// `ymera_partition_quarantined` name it until it is assigned again.
    async fn quarantine(&mut self, tp: TopicPartition, reason: String) -> Result<(), RunError> {
        let name = self.name().to_string();
        if self.parts.contains_key(&tp) {
            self.publish(&tp).await?;
        }
        let what = format!(
            "partition {}/{} quarantined: {reason}. Nothing more is read from it (nothing was \
             read from elsewhere); the other partitions go on. To resume it past the gap on \
             purpose: ymera lake accept-gap {name} --topic {} --partition {}",
            tp.0, tp.1, tp.0, tp.1
        );
        error!(pipeline = name, topic = tp.0, partition = tp.1, "{what}");
        metrics::gauge!("ymera_partition_quarantined", "pipeline" => name.clone(), "topic" => tp.0.clone(), "partition" => tp.1.to_string())
            .set(1.0);
        self.opts
            .health
            .set(&self.quarantine_component(&tp), Some(what));
        self.stats.quarantined.retain(|(q, _)| *q != tp);
        self.stats.quarantined.push((tp, reason));
        Ok(())
    }

    /// A partition revoked or assigned again is no longer quarantined by this runner.
    fn release(&mut self, tp: &TopicPartition) {
        let before = self.stats.quarantined.len();
        self.stats.quarantined.retain(|(q, _)| q != tp);
        if self.stats.quarantined.len() != before {
            metrics::gauge!("ymera_partition_quarantined", "pipeline" => self.name().to_string(), "topic" => tp.0.clone(), "partition" => tp.1.to_string())
                .set(0.0);
            self.opts.health.set(&self.quarantine_component(tp), None);
        }
    }

    /// The readiness component of a quarantined partition.
    fn quarantine_component(&self, tp: &TopicPartition) -> String {
        format!("{}/{}/{}", self.component, tp.0, tp.1)
    }

    /// Tells the compactor whether this runner owns the lead partition now.
    fn update_lead(&self) {
        if let Some((tp, leader)) = &self.lead {
            leader.store(
                self.parts.contains_key(tp),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn name(&self) -> &str {
        &self.p.spec.name
    }

    async fn drive(
        &mut self,
        events: &mut tokio::sync::mpsc::Receiver<SourceEvent>,
    ) -> Result<(), RunError> {
        let source = self.source.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut stopping = false;
        let shutdown = self.opts.shutdown.clone();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(SourceEvent::Chunk(chunk)) => self.on_chunk(chunk).await?,
                    Some(SourceEvent::Revoked(tps)) => {
                        for tp in tps {
                            self.release(&tp);
                            if self.parts.remove(&tp).is_some_and(|p| p.segment.is_some()) {
                                info!(pipeline = self.name(), topic = tp.0, partition = tp.1, "dropped the unpublished segment of a revoked partition");
                            }
                        }
                        self.update_lead();
                    }
                    Some(SourceEvent::Assigned(starts)) => {
                        // positions now come from the log: so must the next commits' view
                        self.tables.forget_all();
                        self.assignments += 1;
                        // the runner continues each partition from where its sinks say
                        let shared = self.held_shared.lock().map(|h| h.clone()).unwrap_or_default();
                        for (tp, start) in starts {
                            self.release(&tp);
                            let anomaly = if self.p.has_state() {
                                // the checkpoint this assignment's resolution chose (not a
                                // later one's: they queue per partition)
                                let chosen = self.checkpoints.lock().ok().and_then(|mut q| {
                                    let front = q.get_mut(&tp).and_then(|q| q.pop_front()).flatten();
                                    if q.get(&tp).is_some_and(|q| q.is_empty()) {
                                        q.remove(&tp);
                                    }
                                    front
                                });
                                let saved_at = chosen.as_ref().map(|c| c.next_offset);
                                let c = chosen.unwrap_or_default();
                                TpState {
                                    chain: c.chain,
                                    fresh: Vec::new(),
                                    pending: c.pending,
                                    notified: c.notified,
                                    // delivered alerts are recorded in it at a clean stop
                                    saved_at,
                                    generation: self.assignments,
                                    ..TpState::default()
                                }
                            } else {
                                TpState::default()
                            };
                            let held = shared.get(&tp).cloned().unwrap_or_default();
                            self.parts.insert(tp, Partition { segment: None, next: start, held, anomaly });
                        }
                        self.update_lead();
                    }
                    Some(SourceEvent::Idle) | Some(SourceEvent::Stopped) => {
                        self.publish_all().await?;
                        self.settle_alerts().await?;
                        return Ok(());
                    }
                    Some(SourceEvent::Quarantined { tp, reason }) => self.quarantine(tp, reason).await?,
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
                    self.take_outcomes();
                    self.publish_due().await?;
                    self.keep_to_budget().await?;
                    if source.has_assignment() {
                        self.opts.health.set(&self.component, None);
                    } else if !stopping {
                        let why = match self.trouble.lock().ok().and_then(|t| t.clone()) {
                            Some(trouble) => format!("the assignment waits: {trouble}"),
                            None => "waiting for a partition assignment (is the broker reachable?)".into(),
                        };
                        self.opts.health.set(&self.component, Some(why));
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

    /// How many lake tables the pipeline writes, one sink group each: its sinks' tables,
    /// then the DLQ table ([`Pipeline::tables`] order).
    fn lake_tables(&self) -> usize {
        self.p.sinks.len() + usize::from(self.p.dlq_table.is_some())
    }

    /// The sink groups: the lake tables, then the warehouse when the pipeline has one.
    fn groups(&self) -> usize {
        self.lake_tables() + usize::from(!self.p.warehouse_sinks.is_empty())
    }

    /// The group of the DLQ table, when the pipeline has one.
    fn dlq_group(&self) -> Option<usize> {
        self.p.dlq_table.as_ref().map(|_| self.p.sinks.len())
    }

    /// The table of lake group `g`.
    fn table_spec(&self, g: usize) -> Option<&ymera_lake::TableSpec> {
        match self.p.sinks.get(g) {
            Some(s) => Some(&s.table),
            None if g == self.p.sinks.len() => self.p.dlq_table.as_ref(),
            None => None,
        }
    }
}

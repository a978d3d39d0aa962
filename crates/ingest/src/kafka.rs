//! The Kafka source: a consumer group polled on a dedicated thread, cut into per-partition
//! micro-batches ([`Chunk`]s), with offsets chosen by the sinks and a fence that stops a
//! revoked partition's late publication.
//!
//! Execution model:
//! - one OS thread owns the librdkafka poll loop (librdkafka calls are blocking; the async
//!   runtime never waits on them). Rebalance callbacks run on that thread.
//! - on assignment, [`Resolver::resolve`] is asked where each partition resumes (the sinks'
//!   durable position); the partition is assigned at that offset, so the group offset is
//!   only a fallback.
//! - on revocation, the [`Fence`] is taken for writing: the callback waits for an
//!   in-flight publication of that partition to finish, then marks it revoked, so no
//!   publication of the old assignment can happen after the group moves the partition.
//! - the pipeline commits an offset only after every sink made everything below it
//!   durable ([`KafkaSource::commit`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{RwLock, RwLockReadGuard, mpsc};
use tracing::{debug, error, info, warn};

/// A Kafka topic and partition.
pub type TopicPartition = (String, i32);

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub offset: i64,
    /// Broker or producer timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Copies a consumed message (key, value, offset, timestamp, headers).
    pub fn from_message<M: Message>(msg: &M) -> Record {
        Record {
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            headers: msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                x.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Consecutive records of one partition.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub topic: String,
    pub partition: i32,
    /// The assignment epoch the records were read under (see [`Fence`]).
    pub epoch: u64,
    pub records: Vec<Record>,
    pub bytes: usize,
}

/// What the source tells the pipeline.
#[derive(Debug)]
pub enum SourceEvent {
    Chunk(Chunk),
    /// These partitions were taken away: drop their unpublished work.
    Revoked(Vec<TopicPartition>),
    /// These partitions were assigned and resume at these offsets (None: nothing durable
    /// yet, the `start` policy applies).
    Assigned(Vec<(TopicPartition, Option<i64>)>),
    /// Every assigned partition is caught up and has been idle for the requested time.
    Idle,
    /// A stop was requested: every record read before it was sent.
    Stopped,
    /// This partition cannot be read on without losing or repeating records (its resume
    /// position is not in the log: retention, truncation, a re-created topic). Nothing more
    /// is read from it until it is assigned again; the other partitions go on.
    Quarantined {
        tp: TopicPartition,
        reason: String,
    },
    /// The source cannot go on without losing or repeating records.
    Fatal(String),
}

/// Where a partition starts when the sinks hold nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Committed,
}

/// Tells the source where each newly assigned partition resumes. Called on the consumer
/// thread, which may block.
pub trait Resolver: Send + Sync + 'static {
    /// The next offset each partition should read (None: nothing durable yet).
    fn resolve(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, String>;
}

/// Which partitions this process owns, and under which epoch. Publication holds a read
/// guard; revocation takes the write lock, so it waits for a publication in flight and
/// every later one sees the partition gone.
#[derive(Debug, Default)]
pub struct Fence {
    owned: RwLock<HashMap<TopicPartition, u64>>,
    next_epoch: AtomicU64,
}

impl Fence {
    fn assign_blocking(&self, tps: &[TopicPartition]) -> u64 {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut owned = self.owned.blocking_write();
        for tp in tps {
            owned.insert(tp.clone(), epoch);
        }
        epoch
    }

    fn revoke_blocking(&self, tps: &[TopicPartition]) {
        let mut owned = self.owned.blocking_write();
        for tp in tps {
            owned.remove(tp);
        }
    }

    /// Records `tps` as owned under a new epoch and returns it, as the rebalance callback
    /// does (for a runtime driven without a broker, e.g. in tests).
    pub async fn assign(&self, tps: &[TopicPartition]) -> u64 {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut owned = self.owned.write().await;
        for tp in tps {
            owned.insert(tp.clone(), epoch);
        }
        epoch
    }

    /// Forgets `tps`, as the rebalance callback does on revocation.
    pub async fn revoke(&self, tps: &[TopicPartition]) {
        let mut owned = self.owned.write().await;
        for tp in tps {
            owned.remove(tp);
        }
    }

    /// A guard that keeps `tp` owned under `epoch` while held, or None when it is not.
    pub async fn hold(
        &self,
        tp: &TopicPartition,
        epoch: u64,
    ) -> Option<RwLockReadGuard<'_, HashMap<TopicPartition, u64>>> {
        let guard = self.owned.read().await;
        (guard.get(tp) == Some(&epoch)).then_some(guard)
    }

    /// A guard that keeps `tp` owned (under whatever epoch) while held, or None when this
    /// consumer does not own it.
    pub async fn hold_owned(
        &self,
        tp: &TopicPartition,
    ) -> Option<RwLockReadGuard<'_, HashMap<TopicPartition, u64>>> {
        let guard = self.owned.read().await;
        guard.contains_key(tp).then_some(guard)
    }
}

/// Settings of a Kafka source.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub pipeline: String,
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub start: StartFrom,
    /// librdkafka passthrough.
    pub client: BTreeMap<String, String>,
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
    /// The most record bytes the poll loop buffers over all partitions before it hands
    /// them on (and, the runner being busy, pauses fetching): `usize::MAX` for no bound
    /// beyond `max_bytes` per partition.
    pub max_buffered: usize,
    /// Report [`SourceEvent::Idle`] after this long with nothing new.
    pub stop_when_idle: Option<Duration>,
    /// Where the statistics callback leaves each owned partition's high watermark and lag
    /// (the input rate `ymera run` records of itself).
    pub probe: Option<Arc<Probe>>,
}

/// What librdkafka's statistics (every `statistics.interval.ms`, 5 s) last said about the
/// source's partitions: per owned partition its high watermark and consumer lag, and per
/// topic how many partitions it has.
#[derive(Debug, Default)]
pub struct Probe {
    last: std::sync::Mutex<ProbeReading>,
}

/// One statistics report, as [`Probe::reading`] returns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeReading {
    /// Per partition this consumer fetches: (high watermark, consumer lag).
    pub owned: BTreeMap<TopicPartition, (i64, i64)>,
    /// Partitions per topic, from the metadata.
    pub partitions: BTreeMap<String, u32>,
}

impl Probe {
    /// The newest report (empty before the first).
    pub fn reading(&self) -> ProbeReading {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `owned`: the partitions the fence says this process owns (a revoked partition can
    /// linger in the statistics with its last figures).
    fn update(&self, stats: &Statistics, owned: &HashMap<TopicPartition, u64>) {
        let mut r = ProbeReading::default();
        for (topic, t) in &stats.topics {
            let known = || {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && !p.unknown)
            };
            r.partitions.insert(topic.clone(), known().count() as u32);
            for p in known().filter(|p| p.hi_offset >= 0 && p.consumer_lag >= 0) {
                let tp = (topic.clone(), p.partition);
                if owned.contains_key(&tp) {
                    r.owned.insert(tp, (p.hi_offset, p.consumer_lag));
                }
            }
        }
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = r;
    }
}

/// An assignment change seen in a callback: partitions with their start offset when assigned.
enum Change {
    Assigned(Vec<(TopicPartition, Option<i64>)>, u64),
    Revoked(Vec<TopicPartition>),
}

struct Ctx {
    pipeline: String,
    probe: Option<Arc<Probe>>,
    fence: Arc<Fence>,
    resolver: Arc<dyn Resolver>,
    start: StartFrom,
    /// Assignment changes seen in callbacks, handled by the poll loop after `poll` returns.
    changes: std::sync::Mutex<Vec<Change>>,
    assigned: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(
                    pipeline = self.pipeline,
                    facility = fac,
                    "librdkafka: {message}"
                )
            }
            RDKafkaLogLevel::Warning => warn!(
                pipeline = self.pipeline,
                facility = fac,
                "librdkafka: {message}"
            ),
            _ => debug!(
                pipeline = self.pipeline,
                facility = fac,
                "librdkafka: {message}"
            ),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries connections itself, with backoff; say so and keep going.
        warn!(pipeline = self.pipeline, %error, reason, "kafka client error (librdkafka retries with backoff)");
    }

    fn stats(&self, stats: Statistics) {
        // the callback runs on the poll thread; a publication may hold the fence (read),
        // a revocation cannot (it runs on this thread too): skip a report rather than wait
        if let Some(probe) = &self.probe
            && let Ok(owned) = self.fence.owned.try_read()
        {
            probe.update(&stats, &owned);
        }
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    metrics::gauge!("ymera_kafka_consumer_lag", "pipeline" => self.pipeline.clone(), "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                // Without the sinks' durable position nothing may be read: retry until the
                // lake answers (the group moves the partitions elsewhere if this takes longer
                // than max.poll.interval.ms).
                let mut backoff = Duration::from_millis(200);
                let resolved = loop {
                    match self.resolver.resolve(&tps) {
                        Ok(r) => break r,
                        Err(e) => {
                            error!(pipeline = self.pipeline, error = %e, retry_in = ?backoff, "cannot read where the partitions resume; retrying");
                            if self.stop.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                };
                let mut starts = Vec::with_capacity(tps.len());
                for mut elem in tpl.elements() {
                    let tp = (elem.topic().to_string(), elem.partition());
                    let next = resolved.get(&tp).copied().flatten();
                    starts.push((tp.clone(), next));
                    let offset = match next {
                        Some(next) => Offset::Offset(next),
                        None => match self.start {
                            StartFrom::Earliest => Offset::Beginning,
                            StartFrom::Latest => Offset::End,
                            StartFrom::Committed => Offset::Stored,
                        },
                    };
                    if let Err(e) = elem.set_offset(offset) {
                        error!(topic = tp.0, partition = tp.1, error = %e, "cannot set start offset");
                    }
                    info!(
                        pipeline = self.pipeline,
                        topic = tp.0,
                        partition = tp.1,
                        ?offset,
                        "partition assigned"
                    );
                }
                let epoch = self.fence.assign_blocking(&tps);
                self.assigned.store(true, Ordering::SeqCst);
                if let Ok(mut c) = self.changes.lock() {
                    c.push(Change::Assigned(starts, epoch));
                }
            }
            Rebalance::Revoke(tpl) => {
                let tps = tps_of(tpl);
                self.fence.revoke_blocking(&tps);
                info!(
                    pipeline = self.pipeline,
                    partitions = tps.len(),
                    "partitions revoked"
                );
                if let Ok(mut c) = self.changes.lock() {
                    c.push(Change::Revoked(tps));
                }
            }
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after an error: so must the fence
                warn!(pipeline = self.pipeline, error = %e, "rebalance error: every partition is given up");
                let owned: Vec<TopicPartition> =
                    self.fence.owned.blocking_read().keys().cloned().collect();
                self.fence.revoke_blocking(&owned);
                if let Ok(mut c) = self.changes.lock() {
                    c.push(Change::Revoked(owned));
                }
            }
        }
    }
}

/// A running Kafka source.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<Ctx>>,
    stop: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    fence: Arc<Fence>,
    pipeline: String,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

/// librdkafka settings a pipeline's `source.kafka.client` may not set, and why: the
/// exactly-once design rests on them (`client_config` sets the first three).
pub const RESERVED_CLIENT_KEYS: &[(&str, &str)] = &[
    ("group.id", "the consumer group is `source.kafka.group_id`"),
    (
        "enable.auto.commit",
        "offsets are committed only after the sinks hold the records",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after the sinks hold the records",
    ),
    (
        "isolation.level",
        "the source reads committed transactions only (read_committed); aborted records must never reach a sink",
    ),
];

/// The librdkafka configuration of a source (exposed for `validate`'s broker check).
pub fn client_config(
    brokers: &str,
    group_id: &str,
    extra: &BTreeMap<String, String>,
) -> ClientConfig {
    // every passthrough key applies to the pipeline's own consumer
    let mut cfg = crate::produce::connection_config(brokers, &BTreeMap::new());
    cfg.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("statistics.interval.ms", "5000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("allow.auto.create.topics", "false");
    for (k, v) in extra {
        cfg.set(k, v);
    }
    cfg
}

impl KafkaSource {
    /// Subscribes and starts the poll thread; events arrive on the returned receiver.
    pub fn start(
        settings: SourceSettings,
        resolver: Arc<dyn Resolver>,
    ) -> Result<(KafkaSource, mpsc::Receiver<SourceEvent>), KafkaError> {
        let fence = Arc::new(Fence::default());
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            stop: stop.clone(),
            pipeline: settings.pipeline.clone(),
            probe: settings.probe.clone(),
            fence: fence.clone(),
            resolver,
            start: settings.start,
            changes: std::sync::Mutex::new(Vec::new()),
            assigned: AtomicBool::new(false),
        };
        let mut cfg = client_config(&settings.brokers, &settings.group_id, &settings.client);
        if settings.start == StartFrom::Committed
            && !settings.client.contains_key("auto.offset.reset")
        {
            // `committed`: the group's offset, else the earliest record
            cfg.set("auto.offset.reset", "earliest");
        }
        let consumer: BaseConsumer<Ctx> = cfg.create_with_context(ctx)?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let consumer = Arc::new(consumer);
        let (tx, rx) = mpsc::channel(4);
        let closing = Arc::new(AtomicBool::new(false));
        let pipeline = settings.pipeline.clone();
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            let closing = closing.clone();
            std::thread::Builder::new()
                .name(format!("kafka-{}", settings.pipeline))
                .spawn(move || poll_loop(&consumer, &settings, &stop, &closing, &tx))
                .map_err(|e| {
                    KafkaError::ClientCreation(format!("cannot start the poll thread: {e}"))
                })?
        };
        Ok((
            KafkaSource {
                consumer,
                stop,
                closing,
                thread: Some(thread),
                fence,
                pipeline,
            },
            rx,
        ))
    }

    /// The ownership fence publication must hold.
    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// Commits `next_offset` (the first offset not yet durable) for a partition.
    /// `sync` waits for the broker's answer (call it from a blocking context then).
    pub fn commit(&self, offsets: &[(TopicPartition, i64)], sync: bool) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), next) in offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*next))?;
        }
        self.consumer.commit(
            &tpl,
            if sync {
                CommitMode::Sync
            } else {
                CommitMode::Async
            },
        )
    }

    /// True once the group gave this consumer an assignment.
    pub fn has_assignment(&self) -> bool {
        self.consumer.context().assigned.load(Ordering::SeqCst)
    }

    /// Stops polling; buffered records are flushed as chunks first. The event channel
    /// closes when the thread is done.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the poll thread, then leaves the group (blocking: call from a blocking
    /// context).
    pub fn close(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.closing.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("the Kafka poll thread panicked");
        }
        self.consumer.unsubscribe();
    }
}

struct Buffer {
    epoch: u64,
    records: Vec<Record>,
    bytes: usize,
    since: Instant,
}

/// The poll loop. It never blocks on the pipeline: events wait in `pending` while the
/// channel is full, and fetching is paused meanwhile, so `poll()` keeps being called and
/// rebalance callbacks keep running (a consumer that stops polling is thrown out of the
/// group without a Revoke, and its fence would not know).
fn poll_loop(
    consumer: &BaseConsumer<Ctx>,
    s: &SourceSettings,
    stop: &AtomicBool,
    closing: &AtomicBool,
    tx: &mpsc::Sender<SourceEvent>,
) {
    let mut buffers: HashMap<TopicPartition, Buffer> = HashMap::new();
    let mut epochs: HashMap<TopicPartition, u64> = HashMap::new();
    // next offset to read per partition, as far as this loop knows
    let mut positions: HashMap<TopicPartition, i64> = HashMap::new();
    let mut pending: VecDeque<SourceEvent> = VecDeque::new();
    // partitions not read on (SourceEvent::Quarantined), until assigned again
    let mut quarantined: HashSet<TopicPartition> = HashSet::new();
    let mut paused = false;
    // after Stopped/Idle/Fatal: nothing more is read; polling goes on until close()
    let mut draining = false;
    let mut last_record = Instant::now();
    let mut last_idle_check = Instant::now();
    loop {
        while let Some(ev) = pending.pop_front() {
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    pending.push_front(ev);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let want_pause = draining || !pending.is_empty();
        if want_pause != paused {
            if let Ok(assignment) = consumer.assignment() {
                let done = if want_pause {
                    consumer.pause(&assignment)
                } else {
                    consumer.resume(&without(&assignment, &quarantined))
                };
                if let Err(e) = done {
                    warn!(pipeline = s.pipeline, error = %e, "cannot pause/resume fetching");
                }
            }
            paused = want_pause;
        }
        if !draining && stop.load(Ordering::SeqCst) {
            for (tp, b) in buffers.drain() {
                pending.push_back(SourceEvent::Chunk(chunk(tp, b)));
            }
            pending.push_back(SourceEvent::Stopped);
            draining = true;
            continue;
        }
        let polled = consumer.poll(Duration::from_millis(100));
        // assignment changes made by callbacks during that poll
        let changes = consumer
            .context()
            .changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        for change in changes {
            match change {
                Change::Assigned(starts, epoch) => {
                    for (tp, next) in &starts {
                        buffers.remove(tp);
                        quarantined.remove(tp);
                        epochs.insert(tp.clone(), epoch);
                        match next {
                            Some(n) => positions.insert(tp.clone(), *n),
                            None => positions.remove(tp),
                        };
                    }
                    pending.push_back(SourceEvent::Assigned(starts));
                    paused = false; // new partitions fetch until paused again
                }
                Change::Revoked(tps) => {
                    for tp in &tps {
                        buffers.remove(tp);
                        epochs.remove(tp);
                        positions.remove(tp);
                        quarantined.remove(tp);
                    }
                    pending.push_back(SourceEvent::Revoked(tps));
                }
            }
            last_record = Instant::now();
        }
        match polled {
            None => {}
            Some(Err(e)) => {
                let code = e.rdkafka_error_code();
                if matches!(
                    code,
                    Some(RDKafkaErrorCode::OffsetOutOfRange)
                        | Some(RDKafkaErrorCode::AutoOffsetReset)
                ) && !draining
                {
                    // a resume position is not in the log (retention, truncation, a topic
                    // re-created): reading from anywhere else would lose or repeat records,
                    // so that partition stops and the others go on
                    let gaps = out_of_range(consumer, &epochs, &positions, &quarantined);
                    if gaps.is_empty() && !quarantined.is_empty() {
                        // librdkafka reports each partition's error on its own, without
                        // naming it: one already quarantined (or the same one again)
                        debug!(pipeline = s.pipeline, error = %e, "out-of-range error of a quarantined partition");
                    } else if gaps.is_empty() {
                        pending.push_back(SourceEvent::Fatal(format!(
                            "a resume position is not in the topic any more ({e}), and no \
                             assigned partition's watermarks say which; nothing was read from elsewhere"
                        )));
                        draining = true;
                    }
                    for (tp, reason) in gaps {
                        // what was read before the gap is good: it goes on to the sinks
                        if let Some(b) = buffers.remove(&tp) {
                            pending.push_back(SourceEvent::Chunk(chunk(tp.clone(), b)));
                        }
                        let mut one = TopicPartitionList::new();
                        one.add_partition(&tp.0, tp.1);
                        if let Err(e) = consumer.pause(&one) {
                            warn!(pipeline = s.pipeline, topic = tp.0, partition = tp.1, error = %e, "cannot pause a quarantined partition (its records are dropped)");
                        }
                        quarantined.insert(tp.clone());
                        pending.push_back(SourceEvent::Quarantined { tp, reason });
                    }
                } else {
                    warn!(pipeline = s.pipeline, error = %e, "kafka poll error");
                }
            }
            Some(Ok(_)) if draining => {}
            Some(Ok(msg)) => {
                last_record = Instant::now();
                let tp = (msg.topic().to_string(), msg.partition());
                let Some(&epoch) = epochs.get(&tp) else {
                    continue;
                };
                if quarantined.contains(&tp) {
                    continue;
                }
                positions.insert(tp.clone(), msg.offset() + 1);
                let record = Record::from_message(&msg);
                let size = record.value.as_ref().map_or(0, Vec::len)
                    + record.key.as_ref().map_or(0, Vec::len);
                let buf = buffers.entry(tp.clone()).or_insert_with(|| Buffer {
                    epoch,
                    records: Vec::new(),
                    bytes: 0,
                    since: Instant::now(),
                });
                buf.records.push(record);
                buf.bytes += size;
                if (buf.records.len() >= s.max_records || buf.bytes >= s.max_bytes)
                    && let Some(b) = buffers.remove(&tp)
                {
                    pending.push_back(SourceEvent::Chunk(chunk(tp, b)));
                }
                // over the memory budget's share: everything buffered goes on now, and
                // fetching pauses until the runner has taken it
                if s.max_buffered != usize::MAX
                    && buffers.values().map(|b| b.bytes).sum::<usize>() >= s.max_buffered
                {
                    for (tp, b) in buffers.drain() {
                        pending.push_back(SourceEvent::Chunk(chunk(tp, b)));
                    }
                }
            }
        }
        // time-bounded batches
        let due: Vec<TopicPartition> = buffers
            .iter()
            .filter(|(_, b)| b.since.elapsed() >= s.max_wait)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in due {
            if let Some(b) = buffers.remove(&tp) {
                pending.push_back(SourceEvent::Chunk(chunk(tp, b)));
            }
        }
        if let Some(idle) = s.stop_when_idle
            && !draining
            && buffers.is_empty()
            && pending.is_empty()
            && last_record.elapsed() >= idle
            && last_idle_check.elapsed() >= Duration::from_secs(1)
        {
            last_idle_check = Instant::now();
            if !epochs.is_empty() && caught_up(consumer, &epochs, &positions, &quarantined) {
                info!(
                    pipeline = s.pipeline,
                    "all assigned partitions caught up and idle"
                );
                pending.push_back(SourceEvent::Idle);
                draining = true;
            }
        }
    }
}

fn chunk(tp: TopicPartition, b: Buffer) -> Chunk {
    Chunk {
        topic: tp.0,
        partition: tp.1,
        epoch: b.epoch,
        records: b.records,
        bytes: b.bytes,
    }
}

/// `list` without the partitions in `out`.
fn without(list: &TopicPartitionList, out: &HashSet<TopicPartition>) -> TopicPartitionList {
    let mut kept = TopicPartitionList::new();
    for e in list.elements() {
        if !out.contains(&(e.topic().to_string(), e.partition())) {
            kept.add_partition(e.topic(), e.partition());
        }
    }
    kept
}

/// The assigned partitions (not yet quarantined) whose next offset is outside the log, each
/// with why: before its start (retention or truncation removed records never read) or past
/// its end (the topic was re-created, or truncated).
fn out_of_range(
    consumer: &BaseConsumer<Ctx>,
    epochs: &HashMap<TopicPartition, u64>,
    positions: &HashMap<TopicPartition, i64>,
    quarantined: &HashSet<TopicPartition>,
) -> Vec<(TopicPartition, String)> {
    let mut out = Vec::new();
    for tp in epochs.keys().filter(|tp| !quarantined.contains(*tp)) {
        let Some(&pos) = positions.get(tp) else {
            continue;
        };
        let Ok((low, high)) = consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(5)) else {
            continue;
        };
        if pos < low {
            out.push((
                tp.clone(),
                format!(
                    "its next offset {pos} is before the log start {low}: offsets {pos}..{low} \
                     were removed (retention or truncation) before they were read"
                ),
            ));
        } else if pos > high {
            out.push((
                tp.clone(),
                format!(
                    "its next offset {pos} is past the log end {high}: the topic was re-created \
                     or truncated"
                ),
            ));
        }
    }
    out
}

/// True when every assigned partition (but the quarantined) has been read up to its high
/// watermark.
fn caught_up(
    consumer: &BaseConsumer<Ctx>,
    epochs: &HashMap<TopicPartition, u64>,
    positions: &HashMap<TopicPartition, i64>,
    quarantined: &HashSet<TopicPartition>,
) -> bool {
    // librdkafka's position moves past what no record shows: the commit markers of
    // transactional producers and aborted records (read_committed), so a topic ending in a
    // marker is caught up at its high watermark
    let consumed = consumer.position().ok();
    for tp in epochs.keys().filter(|tp| !quarantined.contains(*tp)) {
        let Ok((low, high)) = consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(5)) else {
            return false;
        };
        let at = consumed
            .as_ref()
            .and_then(|l| l.find_partition(&tp.0, tp.1).map(|e| e.offset()))
            .and_then(|o| match o {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        // nothing read and no durable position: where the consumer stands (latest/committed
        // starts), else the log start
        let pos = match (positions.get(tp), at) {
            (Some(p), Some(a)) => (*p).max(a),
            (Some(p), None) => *p,
            (None, Some(a)) => a,
            (None, None) => low,
        };
        if pos < high {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    /// librdkafka is built with what SASL_SSL clusters and compressed topics need.
    #[test]
    fn librdkafka_has_tls_sasl_and_zstd() {
        let native = rdkafka::config::ClientConfig::new()
            .create_native_config()
            .unwrap();
        let features = native.get("builtin.features").unwrap();
        for f in ["ssl", "sasl_plain", "sasl_scram", "zstd", "gzip"] {
            assert!(
                features.split(',').any(|x| x == f),
                "librdkafka lacks `{f}`: {features}"
            );
        }
    }
}

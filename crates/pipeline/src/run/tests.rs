//! The runtime driven by a scripted source (events on a channel, a fence of its own,
//! commits recorded) over a lake in a temporary directory: no broker.

use std::sync::Mutex;

use tokio::sync::mpsc;
use ymera_ingest::kafka::{Chunk, Record};
use ymera_lake::delta;

use super::*;
use crate::load::Loaded;

pub(crate) const PIPELINE: &str = r#"
name: unit
source:
  kafka: { brokers: "127.0.0.1:1", topics: [events], group_id: unit }
  schema: { id: int64, name: utf8 }
  on_bad_record: dlq
transforms:
  - name: out
    sql: "SELECT id, upper(name) AS name FROM input"
sinks:
  - lake: { table: people, input: out, rolling: { max_rows: 1000000, max_interval: 1h } }
dlq: { path: _dlq/unit }
"#;

/// A source whose events the test sends; it records the offsets committed to it.
#[derive(Default)]
struct Scripted {
    fence: Arc<Fence>,
    commits: Mutex<Vec<(TopicPartition, i64)>>,
}

impl SourceHandle for Scripted {
    fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    fn commit(&self, offsets: &[(TopicPartition, i64)], _sync: bool) -> Result<(), String> {
        self.commits.lock().unwrap().extend_from_slice(offsets);
        Ok(())
    }

    fn has_assignment(&self) -> bool {
        true
    }

    fn request_stop(&self) {}
}

fn tp() -> TopicPartition {
    ("events".to_string(), 0)
}

async fn pipeline() -> Arc<Pipeline> {
    pipeline_from(PIPELINE).await
}

pub(crate) async fn pipeline_from(yaml: &str) -> Arc<Pipeline> {
    let mut loaded = Loaded {
        file: "unit.yaml".into(),
        spec: None,
        positions: Default::default(),
        diagnostics: Vec::new(),
        warnings: Vec::new(),
    };
    crate::load::load_str(&mut loaded, yaml, None);
    let p = crate::check(&mut loaded).await;
    Arc::new(p.unwrap_or_else(|| panic!("{:?}", loaded.diagnostics)))
}

fn options(lake: &Lake) -> RunOptions {
    RunOptions {
        lake: lake.clone(),
        warehouse: None,
        stop_when_idle: None,
        shutdown: CancellationToken::new(),
        health: Arc::default(),
        progress: Arc::default(),
        input_rate: None,
        compaction: None,
        memory: None,
    }
}

/// Offsets with these values; `None` is a record that does not decode.
fn chunk(epoch: u64, records: &[(i64, Option<&str>)]) -> SourceEvent {
    let records: Vec<Record> = records
        .iter()
        .map(|(offset, name)| Record {
            key: None,
            value: Some(match name {
                Some(n) => format!(r#"{{"id": {offset}, "name": "{n}"}}"#).into_bytes(),
                None => b"{not json".to_vec(),
            }),
            offset: *offset,
            timestamp_ms: None,
            headers: Vec::new(),
        })
        .collect();
    chunk_of(epoch, records)
}

/// Partition 0's `records` as read under `epoch`.
fn chunk_of(epoch: u64, records: Vec<Record>) -> SourceEvent {
    SourceEvent::Chunk(Chunk {
        topic: "events".into(),
        partition: 0,
        epoch,
        bytes: records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, Vec::len))
            .sum(),
        records,
    })
}

/// Runs a runner over `events` (the resolver's findings as given) to its end.
async fn drive(
    lake: &Lake,
    source: &Arc<Scripted>,
    held: Held,
    events: Vec<SourceEvent>,
) -> (Result<(), RunError>, RunStats) {
    drive_with(pipeline().await, lake, source, held, events).await
}

/// [`drive`] for the pipeline `p`.
async fn drive_with(
    p: Arc<Pipeline>,
    lake: &Lake,
    source: &Arc<Scripted>,
    held: Held,
    events: Vec<SourceEvent>,
) -> (Result<(), RunError>, RunStats) {
    drive_notifying(p, lake, source, (held, None), events, None).await
}

/// [`drive_with`] with alerts delivered by `notifier`, and the anomaly checkpoint the
/// resolution of the first assignment chose.
async fn drive_notifying(
    p: Arc<Pipeline>,
    lake: &Lake,
    source: &Arc<Scripted>,
    (held, restored): (Held, Option<crate::checkpoint::Checkpoint>),
    events: Vec<SourceEvent>,
    notifier: Option<crate::notify::Notifier>,
) -> (Result<(), RunError>, RunStats) {
    let shared: (HeldMap, CheckpointMap, Trouble) = Default::default();
    shared.0.lock().unwrap().insert(tp(), held);
    if p.has_state() {
        shared.1.lock().unwrap().insert(tp(), [restored].into());
    }
    let mut runner = Runner::new(
        p.clone(),
        p.chain(),
        options(lake),
        source.clone(),
        None,
        shared,
        None,
        notifier,
        None,
    );
    let (tx, mut rx) = mpsc::channel(events.len() + 1);
    for ev in events {
        tx.send(ev).await.unwrap();
    }
    drop(tx);
    let result = runner.drive(&mut rx).await;
    (result, std::mem::take(&mut runner.stats))
}

/// Rows committed per table of the pipeline, read back through SQL over the Delta tables;
/// refuses duplicate ids.
pub(crate) async fn committed_rows(lake: &Lake) -> HashMap<String, u64> {
    let ctx = datafusion::prelude::SessionContext::new();
    let mut rows = HashMap::new();
    for t in ymera_lake::catalog::register_lake_tables(&ctx, lake)
        .await
        .unwrap()
    {
        let (column, dir) = if t.dir.starts_with("_dlq") {
            ("ymera_source_offset", t.dir.clone())
        } else {
            ("id", t.dir.clone())
        };
        let sql = format!("SELECT count(*), count(DISTINCT {column}) FROM {}", t.name);
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let count = |i: usize| {
            batches[0]
                .column(i)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .value(0) as u64
        };
        assert_eq!(count(0), count(1), "duplicate rows in {dir}");
        rows.insert(dir, count(0));
    }
    rows
}

/// The next offset each table of the pipeline holds for the partition: `(people, DLQ)`.
async fn positions(lake: &Lake) -> (Option<i64>, Option<i64>) {
    let id = delta::app_id("unit", "events", 0);
    let mut out = Vec::new();
    for table in ["people", "_dlq/unit"] {
        let pos = delta::positions(lake, table, std::slice::from_ref(&id))
            .await
            .unwrap();
        out.push(pos.get(&id).map(|last| last + 1));
    }
    (out[0], out[1])
}

/// Nothing held by either table.
fn nothing() -> Held {
    Held(vec![None, None])
}

/// The lake holds no position of the pipeline and Kafka was told nothing.
async fn assert_nothing_published(lake: &Lake, source: &Scripted) {
    assert_eq!(positions(lake).await, (None, None));
    assert!(source.commits.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_is_published_once_and_kafka_told_the_next_offset() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let (result, stats) = drive(
        &lake,
        &source,
        nothing(),
        vec![
            SourceEvent::Assigned(vec![(tp(), None)]),
            chunk(
                epoch,
                &[(0, Some("a")), (1, Some("b")), (2, None), (3, Some("d"))],
            ),
            // the broker hands 2 and 3 out again
            chunk(epoch, &[(2, None), (3, Some("d")), (4, Some("e"))]),
            SourceEvent::Stopped,
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(stats.records_in, 5);
    assert_eq!(stats.skipped_duplicates, 2);
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(positions(&lake).await, (Some(5), Some(5)));
    assert_eq!(*source.commits.lock().unwrap(), vec![(tp(), 5)]);
    let rows = committed_rows(&lake).await;
    assert_eq!(rows.get("people"), Some(&4), "{rows:?}");
    assert_eq!(rows.get("_dlq/unit"), Some(&1), "{rows:?}");

    // a restart where the lake holds up to 5 writes only what is past it
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let held = Held(vec![Some(5), Some(5)]);
    let (result, stats) = drive(
        &lake,
        &source,
        held,
        vec![
            SourceEvent::Assigned(vec![(tp(), Some(5))]),
            chunk(
                epoch,
                &[
                    (3, Some("d")),
                    (4, Some("e")),
                    (5, Some("f")),
                    (6, Some("g")),
                ],
            ),
            SourceEvent::Stopped,
        ],
    )
    .await;
    result.unwrap();
    assert_eq!((stats.records_in, stats.skipped_duplicates), (2, 2));
    assert_eq!(positions(&lake).await, (Some(7), Some(7)));
    assert_eq!(*source.commits.lock().unwrap(), vec![(tp(), 7)]);
    assert_eq!(committed_rows(&lake).await.get("people"), Some(&6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_read_under_an_older_assignment_is_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    // the partition moves on (another owner, then back) before the publication
    source.fence.revoke(&[tp()]).await;
    let newer = source.fence.assign(&[tp()]).await;
    assert_ne!(epoch, newer);
    let (result, _) = drive(
        &lake,
        &source,
        nothing(),
        vec![
            SourceEvent::Assigned(vec![(tp(), None)]),
            chunk(epoch, &[(0, Some("a")), (1, Some("b"))]),
            SourceEvent::Stopped,
        ],
    )
    .await;
    result.unwrap();
    assert_nothing_published(&lake, &source).await;

    // a revoked partition's open segment is dropped, not published
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let (result, _) = drive(
        &lake,
        &source,
        nothing(),
        vec![
            SourceEvent::Assigned(vec![(tp(), None)]),
            chunk(epoch, &[(0, Some("a"))]),
            SourceEvent::Revoked(vec![tp()]),
            SourceEvent::Stopped,
        ],
    )
    .await;
    result.unwrap();
    assert_nothing_published(&lake, &source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_behind_the_others_gets_only_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let (result, _) = drive(
        &lake,
        &source,
        nothing(),
        vec![
            SourceEvent::Assigned(vec![(tp(), None)]),
            chunk(epoch, &[(0, Some("a")), (1, Some("b"))]),
            SourceEvent::Stopped,
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(positions(&lake).await, (Some(2), Some(2)));

    // As after a crash between the two tables' commits: `people` holds up to 5 (offsets
    // 2..=4 committed to it alone), the DLQ table up to 2. The source resumes at 2; `people`
    // skips 2..=4, the DLQ table gets the bad record at 3, and both end at 7.
    let p = pipeline().await;
    let people = &p.sinks[0].table;
    let batch = arrow::array::RecordBatch::try_new(
        people.schema.clone(),
        vec![
            Arc::new(arrow::array::Int64Array::from(vec![2, 4])),
            Arc::new(arrow::array::StringArray::from(vec!["C", "E"])),
        ],
    )
    .unwrap();
    let txn = (delta::app_id("unit", "events", 0), 2, 4);
    delta::append(
        &lake,
        people,
        vec![batch],
        "events+0+2-4.parquet",
        vec![txn],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(positions(&lake).await, (Some(5), Some(2)));
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let held = Held(vec![Some(5), Some(2)]);
    assert_eq!(held.resume_at(false), Some(2));
    let (result, stats) = drive(
        &lake,
        &source,
        held,
        vec![
            SourceEvent::Assigned(vec![(tp(), Some(2))]),
            chunk(
                epoch,
                &[
                    (2, Some("c")),
                    (3, None),
                    (4, Some("e")),
                    (5, Some("f")),
                    (6, Some("g")),
                ],
            ),
            SourceEvent::Stopped,
        ],
    )
    .await;
    result.unwrap();
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(positions(&lake).await, (Some(7), Some(7)));
    assert_eq!(*source.commits.lock().unwrap(), vec![(tp(), 7)]);
    let rows = committed_rows(&lake).await;
    assert_eq!(rows.get("people"), Some(&6), "{rows:?}");
    assert_eq!(rows.get("_dlq/unit"), Some(&1), "{rows:?}");
}

/// [`PIPELINE`] with an anomaly stage: its detector state is checkpointed under `_state/`.
const ANOMALY_PIPELINE: &str = r#"
name: unit
source:
  kafka: { brokers: "127.0.0.1:1", topics: [events], group_id: unit }
  schema: { id: int64, name: utf8, ts: timestamp_us, v: float64 }
  on_bad_record: dlq
transforms:
  - name: scored
    anomaly: { key: [name], time: ts, value: v, detector: { detectors: [robust_z], threshold: 0.9 } }
sinks:
  - lake: { table: people, input: scored, rolling: { max_rows: 1000000, max_interval: 1h } }
dlq: { path: _dlq/unit }
"#;

/// Metrics at offsets `offsets` (one a minute, key `a`).
fn metrics(epoch: u64, offsets: std::ops::Range<i64>) -> SourceEvent {
    let records: Vec<Record> = offsets
        .map(|o| Record {
            key: None,
            value: Some(
                format!(
                    r#"{{"id": {o}, "name": "a", "ts": "2026-01-01T00:{o:02}:00Z", "v": {}}}"#,
                    10.0 + (o % 3) as f64
                )
                .into_bytes(),
            ),
            offset: o,
            timestamp_ms: None,
            headers: Vec::new(),
        })
        .collect();
    chunk_of(epoch, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_finds_its_offsets_held_leaves_no_anomaly_state() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let p = pipeline_from(ANOMALY_PIPELINE).await;
    let state = "_state/unit/events+0+00000000000000000005.json";
    let run = |held: Held| {
        let (p, lake) = (p.clone(), lake.clone());
        async move {
            let source = Arc::new(Scripted::default());
            let epoch = source.fence.assign(&[tp()]).await;
            let events = vec![
                SourceEvent::Assigned(vec![(tp(), None)]),
                metrics(epoch, 0..5),
                SourceEvent::Stopped,
            ];
            drive_with(p, &lake, &source, held, events).await
        }
    };
    // the partition's owner commits offsets 0..=4 and the state after them
    let (result, _) = run(nothing()).await;
    result.unwrap();
    assert_eq!(positions(&lake).await, (Some(5), Some(5)));
    let has_state = || async {
        let objects = lake.list("_state/unit").await.unwrap();
        objects.iter().any(|p| p.ends_with(state))
    };
    assert!(has_state().await, "no state after the owner's commit");
    lake.delete(state).await.unwrap();
    // a zombie that resolved the partition before that commit processes the same records:
    // both tables already hold them, so it adds no rows and writes no state of its own
    let (result, _) = run(nothing()).await;
    result.unwrap();
    assert_eq!(committed_rows(&lake).await.get("people"), Some(&5));
    assert!(
        !has_state().await,
        "a writer whose offsets were already held wrote the state at them"
    );
}

/// [`ANOMALY_PIPELINE`] whose alerts are posted to `url` (2 s a try); a segment per 5 records.
fn alerting_pipeline(url: &str) -> String {
    ANOMALY_PIPELINE
        .replace(
            "threshold: 0.9 } }",
            &format!(
                "threshold: 0.9, warmup_points: 30 }}, alerts: {{ table: alerts, webhook: {{ url: \"{url}\", timeout: 2s }} }} }}"
            ),
        )
        .replace("max_rows: 1000000", "max_rows: 5")
}

/// Metrics of key `a` at offsets `offsets`, a minute apart: steady, but 1000 at `spike`.
fn steady_with_spike(
    epoch: u64,
    offsets: std::ops::Range<i64>,
    spike: std::ops::Range<i64>,
) -> SourceEvent {
    let records: Vec<Record> = offsets
        .map(|o| {
            let v = if spike.contains(&o) {
                1000.0
            } else {
                10.0 + (o % 3) as f64
            };
            Record {
                key: None,
                value: Some(
                    format!(
                        r#"{{"id": {o}, "name": "a", "ts": "2026-01-01T{:02}:{:02}:00Z", "v": {v}}}"#,
                        o / 60,
                        o % 60
                    )
                    .into_bytes(),
                ),
                offset: o,
                timestamp_ms: None,
                headers: Vec::new(),
            }
        })
        .collect();
    chunk_of(epoch, records)
}

/// 100 records in chunks of 5 (a commit each), a spike at `spike` that opens one alert.
async fn alerting_run(
    lake: &Lake,
    url: &str,
    spike: std::ops::Range<i64>,
) -> (Result<(), RunError>, std::time::Duration) {
    let p = pipeline_from(&alerting_pipeline(url)).await;
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let mut events = vec![SourceEvent::Assigned(vec![(tp(), None)])];
    for from in (0..100).step_by(5) {
        events.push(steady_with_spike(epoch, from..from + 5, spike.clone()));
    }
    events.push(SourceEvent::Stopped);
    let notifier = crate::notify::Notifier::start("unit", None).unwrap();
    let started = Instant::now();
    let (result, _) =
        drive_notifying(p, lake, &source, (nothing(), None), events, Some(notifier)).await;
    (result, started.elapsed())
}

/// A run after [`alerting_run`] with nothing new to read: the partition resumes at 100 from
/// its checkpoint there, and stops.
async fn idle_rerun(lake: &Lake, url: &str) {
    let p = pipeline_from(&alerting_pipeline(url)).await;
    let source = Arc::new(Scripted::default());
    source.fence.assign(&[tp()]).await;
    let restored = crate::checkpoint::load(lake, "unit", &tp(), Some(100))
        .await
        .unwrap();
    assert_eq!(restored.as_ref().map(|c| c.next_offset), Some(100));
    let events = vec![
        SourceEvent::Assigned(vec![(tp(), Some(100))]),
        SourceEvent::Stopped,
    ];
    let notifier = crate::notify::Notifier::start("unit", None).unwrap();
    // the sinks (people, alerts, the DLQ) hold everything before 100
    let held = Held(vec![Some(100); 3]);
    let (result, _) =
        drive_notifying(p, lake, &source, (held, restored), events, Some(notifier)).await;
    result.unwrap();
}

/// The checkpoint at 100: (pending alerts, notified alerts).
async fn alerts_at_100(lake: &Lake) -> (usize, usize) {
    let c = crate::checkpoint::read_at(lake, "unit", &tp(), 100)
        .await
        .unwrap()
        .unwrap();
    (c.pending.len(), c.notified.len())
}

/// A webhook receiver on a free port answering 204; its URL and the number of posts.
async fn counting_webhook() -> (String, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let posts = Arc::new(Mutex::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let mut req = Vec::new();
            while !String::from_utf8_lossy(&req).contains("alert_id") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            *counted.lock().unwrap() += 1;
            let _ = s
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    (url, posts)
}

/// A webhook that accepts every connection and never answers; its URL.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_webhook_never_slows_the_commits() {
    let url = black_hole().await;
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let (result, took) = alerting_run(&lake, &url, 40..43).await;
    result.unwrap();
    // delivered on the publish path, the alert's 2 s timeout would be paid at each of the
    // 11 commits after it opened (22 s and more); off it, once at the stop (3 s at most)
    assert!(took < Duration::from_secs(8), "the run took {took:?}");
    assert_eq!(
        positions(&lake).await.0,
        Some(100),
        "every record committed"
    );
    // not delivered: still pending in the last checkpoint, for the next run to deliver
    assert_eq!(alerts_at_100(&lake).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_delivered_at_a_clean_stop_is_not_sent_again() {
    let (url, posts) = counting_webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    // the spike is in the last segment: its checkpoint is written before the delivery,
    // so only the stop records it
    let (result, _) = alerting_run(&lake, &url, 95..98).await;
    result.unwrap();
    assert_eq!(*posts.lock().unwrap(), 1);
    assert_eq!(alerts_at_100(&lake).await, (0, 1));
    idle_rerun(&lake, &url).await;
    assert_eq!(*posts.lock().unwrap(), 1, "sent again after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_left_pending_is_delivered_by_the_next_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let (result, _) = alerting_run(&lake, &black_hole().await, 40..43).await;
    result.unwrap();
    assert_eq!(alerts_at_100(&lake).await, (1, 0));
    // the next runs read nothing new: the first delivers it and records that it did
    let (url, posts) = counting_webhook().await;
    idle_rerun(&lake, &url).await;
    assert_eq!(*posts.lock().unwrap(), 1);
    assert_eq!(alerts_at_100(&lake).await, (0, 1));
    idle_rerun(&lake, &url).await;
    assert_eq!(*posts.lock().unwrap(), 1, "sent again by a later run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_budget_the_largest_open_segment_is_published_early() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let p = pipeline().await;
    let source = Arc::new(Scripted::default());
    let epoch = source.fence.assign(&[tp()]).await;
    let budget = Arc::new(MemoryBudget::new(1));
    let shared: (HeldMap, CheckpointMap, Trouble) = Default::default();
    shared.0.lock().unwrap().insert(tp(), nothing());
    let mut opts = options(&lake);
    opts.memory = Some(budget.clone());
    let mut runner = Runner::new(
        p.clone(),
        p.chain(),
        opts,
        source.clone(),
        None,
        shared,
        None,
        None,
        None,
    );
    let events = vec![
        SourceEvent::Assigned(vec![(tp(), None)]),
        chunk(epoch, &[(0, Some("a")), (1, Some("b"))]),
        chunk(epoch, &[(2, Some("c"))]),
        SourceEvent::Stopped,
    ];
    let (tx, mut rx) = mpsc::channel(events.len());
    for ev in events {
        tx.send(ev).await.unwrap();
    }
    drop(tx);
    runner.drive(&mut rx).await.unwrap();
    // the rolling settings (a million rows, an hour) would have held both chunks in one
    // segment until the stop; a budget of one byte publishes each chunk as it comes
    assert_eq!(*source.commits.lock().unwrap(), vec![(tp(), 2), (tp(), 3)]);
    assert_eq!(runner.held_bytes, 0);
    assert_eq!(budget.held(), 0);
}

//! The warehouse sink under kill -9 (the oracle of `exactly_once::kill_9_at_random_moments`):
//! rows and the partition's next offset are committed in one transaction, so at every
//! moment the `_ymera_offsets` row of a partition says exactly which of its records are in
//! the table — offsets `0..next_offset`, each once — and after the last run every record
//! is there once. Alone, and beside a lake sink in the same pipeline (two ledgers: the
//! source resumes at the lower one and each sink skips what it holds).
//!
//! The SQLite file is read with `python3`'s sqlite3 module between runs, and the rows are
//! mapped back to their (partition, offset) by reading the topic from the broker.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, SeedableRng};

use crate::support::*;

const RECORDS: i64 = 20_000;
const PARTITIONS: i32 = 4;
const TABLE: &str = "seq_events";
/// The seq pipeline's output; no key, so a duplicate would be a second row (not a dead
/// letter).
const MIGRATION: &str = "CREATE TABLE seq_events (
    seq BIGINT,
    ts TIMESTAMP,
    service TEXT,
    latency_ms DOUBLE PRECISION,
    slow BOOLEAN
);
";
const WAREHOUSE_SINK: &str = "  - warehouse: { table: seq_events, mode: append, rolling: { max_rows: 150, max_interval: 1s } }";

/// What the warehouse held at one moment between runs.
struct Snapshot {
    when: String,
    /// Stored next offset per partition of the topic.
    next: HashMap<i32, i64>,
    /// The `seq` of every row.
    seqs: Vec<i64>,
}

/// Reads the warehouse (no `ymera run` may be running) and checks what needs no mapping
/// back to offsets: as many rows as the offsets account for, and no seq twice.
fn snapshot(wh: &SqliteWarehouse, pipeline: &str, topic: &str, when: String) -> Snapshot {
    let mut s = Snapshot {
        when,
        next: HashMap::new(),
        seqs: Vec::new(),
    };
    if wh.has_table("_ymera_offsets") {
        for row in wh.query(&format!(
            "SELECT topic, kafka_partition, next_offset FROM _ymera_offsets WHERE pipeline = '{pipeline}'"
        )) {
            assert_eq!(row[0], topic, "{}: offsets of another topic: {row:?}", s.when);
            let p = row[1].as_i64().expect("kafka_partition") as i32;
            let next = row[2].as_i64().expect("next_offset");
            assert!(s.next.insert(p, next).is_none(), "{}: partition {p} twice", s.when);
        }
    }
    if wh.has_table(TABLE) {
        s.seqs = wh
            .query(&format!("SELECT seq FROM {TABLE}"))
            .iter()
            .map(|r| r[0].as_i64().expect("int seq"))
            .collect();
    }
    let stored: i64 = s.next.values().sum();
    let mut distinct = s.seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        s.seqs.len(),
        "{}: duplicated rows in the warehouse",
        s.when
    );
    assert_eq!(
        s.seqs.len() as i64,
        stored,
        "{}: the warehouse holds {} rows but its offsets account for {stored} ({:?})",
        s.when,
        s.seqs.len(),
        s.next
    );
    s
}

/// Rows in the warehouse table so far (read while `ymera run` may be writing: WAL readers
/// see the last committed transaction).
fn row_count(wh: &SqliteWarehouse) -> usize {
    if !wh.has_table(TABLE) {
        return 0;
    }
    let n = wh.query(&format!("SELECT count(*) FROM {TABLE}"));
    n[0][0].as_u64().expect("count") as usize
}

/// Checks, per partition, that the rows of a snapshot are exactly the records at offsets
/// `0..next_offset`: offsets never ahead of rows, rows never ahead of offsets.
fn assert_rows_match_offsets(s: &Snapshot, at: &HashMap<i64, (i32, i64)>) {
    let mut offsets: HashMap<i32, Vec<i64>> = HashMap::new();
    for seq in &s.seqs {
        let (p, o) = at
            .get(seq)
            .unwrap_or_else(|| panic!("{}: row seq={seq} was never produced", s.when));
        offsets.entry(*p).or_default().push(*o);
    }
    for p in 0..PARTITIONS {
        let mut o = offsets.remove(&p).unwrap_or_default();
        o.sort_unstable();
        let next = s.next.get(&p).copied().unwrap_or(0);
        let first_wrong = o.iter().enumerate().find(|(i, o)| **o != *i as i64);
        assert!(
            o.len() as i64 == next && first_wrong.is_none(),
            "{}: partition {p} has next_offset {next} but {} rows (offsets {:?}..={:?}; first out of place: {first_wrong:?})",
            s.when,
            o.len(),
            o.first(),
            o.last()
        );
    }
    assert!(
        offsets.is_empty(),
        "{}: rows of unknown partitions {:?}",
        s.when,
        offsets.keys()
    );
}

/// A crash loop's leftovers, for the final checks.
struct Crashed {
    _broker: DevBroker,
    bootstrap: String,
    topic: String,
    lake: tempfile::TempDir,
    wh: SqliteWarehouse,
    snapshots: Vec<Snapshot>,
    /// When the last run, the clean one, started.
    last_run: SystemTime,
}

/// The seq pipeline `name` with `sinks`, run and killed with SIGKILL at random moments
/// while 20_000 records are produced, then run until idle. The warehouse is read after
/// every run.
fn kill_9_loop(name: &str, sinks: &str, seed: u64) -> Crashed {
    let topic = unique(name);
    let broker = DevBroker::start(&[(&topic, PARTITIONS)]);
    let bootstrap = broker.bootstrap.clone();
    let yaml = pipeline_yaml_with_sinks(
        name,
        &topic,
        &unique("g"),
        sinks,
        &format!("{{ path: _dlq/{name} }}"),
        "batch: { max_records: 300, max_wait: 200ms }",
    );
    let dir = pipeline_dir(&with_short_session(&yaml));
    let lake = tempfile::tempdir().unwrap();
    let wh = SqliteWarehouse::new(TABLE, MIGRATION);
    let env = wh.env();

    // a steady stream over all the kills, 44 s in all
    let producer = steady_producer(&bootstrap, &topic, RECORDS);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    let mut snapshots: Vec<Snapshot> = Vec::new();
    let started = Instant::now();
    'runs: while kills < 6 || !producer.is_finished() {
        let before = snapshots.last().map_or(0, |s| s.seqs.len());
        let mut child = spawn_run_env(&bootstrap, dir.path(), lake.path(), &[], &env);
        // wait until this run commits rows, then kill it a moment later, while it works
        // through the backlog the restart left
        let run_started = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(status) = child.try_wait().unwrap() {
                panic!("ymera run exited on its own with {status}");
            }
            let rows = row_count(&wh);
            if rows == RECORDS as usize && producer.is_finished() {
                // nothing left to write
                child.kill().unwrap();
                let _ = child.wait();
                break 'runs;
            }
            if rows > before {
                break;
            }
            assert!(
                run_started.elapsed() < Duration::from_secs(60),
                "ymera run wrote nothing in 60s"
            );
        }
        let first_commit = run_started.elapsed();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
        child.kill().unwrap(); // SIGKILL
        kills += 1;
        let _ = child.wait();
        let s = snapshot(&wh, name, &topic, format!("after kill {kills}"));
        eprintln!(
            "{name}: kill {kills} at {:?} (the run's first commit after {first_commit:?}): {} rows",
            started.elapsed(),
            s.seqs.len()
        );
        snapshots.push(s);
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "crash loop took too long"
        );
    }
    producer.join().unwrap();
    assert!(
        kills >= 5,
        "only {kills} kills landed while ymera run wrote: the producer finished too early"
    );
    let last_run = SystemTime::now();
    run_until_idle_env(&bootstrap, dir.path(), lake.path(), &env);
    snapshots.push(snapshot(&wh, name, &topic, "after the last run".into()));
    eprintln!("{name}: {kills} kills, done in {:?}", started.elapsed());
    Crashed {
        _broker: broker,
        bootstrap,
        topic,
        lake,
        wh,
        snapshots,
        last_run,
    }
}

/// Every observed state was consistent; the final one holds every record once; nothing
/// was dead-lettered. Returns the final next offset per partition.
fn assert_warehouse_exactly_once(c: &Crashed) -> HashMap<i32, i64> {
    let at = seq_positions(&c.bootstrap, &c.topic);
    assert_eq!(at.len() as i64, RECORDS, "records in the topic");
    for s in &c.snapshots {
        assert_rows_match_offsets(s, &at);
    }
    let last = c.snapshots.last().expect("a snapshot");
    let mut seqs = last.seqs.clone();
    seqs.sort_unstable();
    assert!(
        seqs == (0..RECORDS).collect::<Vec<_>>(),
        "the warehouse holds {} rows, not seq 0..{RECORDS} once each",
        seqs.len()
    );
    for p in 0..PARTITIONS {
        let n = last.next.get(&p).copied().unwrap_or(0);
        assert!(n >= 1000, "partition {p} processed only {n} records");
    }
    let dead = c.wh.query("SELECT count(*) FROM _ymera_dead_letters");
    assert_eq!(dead[0][0], 0, "rows refused by the warehouse");
    last.next.clone()
}

/// No dead letters in the lake's DLQ table, and no staging file left by the last (clean)
/// run, which started at `last_run`. (A killed run may leave staging files: a run removes
/// them once they are 15 minutes old.)
fn assert_lake_clean(lake: &Path, name: &str, last_run: SystemTime) {
    let dead: usize = parquet_files(&lake.join("_dlq").join(name))
        .iter()
        .flat_map(|f| read_parquet(f))
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(dead, 0, "dead letters in the lake");
    let staging: Vec<_> = std::fs::read_dir(lake.join("_staging"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let left: Vec<_> = staging
        .iter()
        .filter(|f| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= last_run)
        })
        .collect();
    assert!(
        left.is_empty(),
        "staging files left by the last run: {left:?}"
    );
    eprintln!(
        "{name}: {} staging files left by killed runs",
        staging.len()
    );
}

#[test]
fn warehouse_append_survives_kill_9() {
    let name = "wh_crash";
    let crashed = kill_9_loop(name, WAREHOUSE_SINK, 11);
    assert_warehouse_exactly_once(&crashed);
    assert_lake_clean(crashed.lake.path(), name, crashed.last_run);
}

#[test]
fn lake_and_warehouse_in_one_pipeline_survive_kill_9() {
    let name = "both_crash";
    let sinks = format!(
        "  - lake: {{ table: {name}, partition_by: [dt], rolling: {{ max_rows: 700, max_interval: 1s }} }}\n{WAREHOUSE_SINK}"
    );
    let crashed = kill_9_loop(name, &sinks, 13);
    let next = assert_warehouse_exactly_once(&crashed);
    let table = crashed.lake.path().join(name);
    assert_exactly_once(&table, RECORDS);
    // both ledgers end at the same position
    let ends = assert_contiguous(&table);
    for p in 0..PARTITIONS {
        assert_eq!(
            ends.get(&p).map(|last| last + 1),
            next.get(&p).copied(),
            "partition {p}: the lake and the warehouse end at different offsets"
        );
    }
    assert_lake_clean(crashed.lake.path(), name, crashed.last_run);
}

//! Nothing lost, nothing twice: kill -9 at random moments (the Kafka Connect `test_bounce`
//! oracle), a consumer-group rebalance between two processes, and determinism.
//!
//! The kill and rebalance tests run against `ymera broker` (librdkafka's mock cluster in its
//! own process): tansu 0.6.0 serves a fetch at an offset inside the log wrongly (a fetch
//! from offset 900 of a 1249-record partition returned offsets 1204..1248 seven times and
//! never 900..1203, with librdkafka's Python client too), and resuming mid-log is exactly
//! what these tests exercise. `group_commits_land_on_tansu` covers tansu's group protocol.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::support::*;

const RECORDS: i64 = 20_000;
const PARTITIONS: i32 = 4;

/// Commits in the Delta log of `table` (each one a published segment of one partition,
/// after the table's creation).
fn commit_records(lake: &std::path::Path, table: &str) -> usize {
    std::fs::read_dir(lake.join(table).join("_delta_log"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Runs `ymera run` on `dir` against `bootstrap` while `producer` produces, and kills it
/// with SIGKILL a random moment after each run published something, at least `min_kills`
/// times and until the producer is done; the kills that landed on a working process.
fn kill_loop(
    bootstrap: &str,
    dir: &std::path::Path,
    lake: &std::path::Path,
    table: &str,
    env: &[(&str, std::ffi::OsString)],
    producer: &std::thread::JoinHandle<()>,
    min_kills: usize,
    seed: u64,
) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    let started = Instant::now();
    while kills < min_kills || !producer.is_finished() {
        let before = commit_records(lake, table);
        let mut child = spawn_run_env(bootstrap, dir, lake, &[], env);
        // kill each run a moment after it published something, so every kill lands on a
        // process that is working (earlier versions of this test killed runs that had
        // not been assigned partitions yet)
        let run_started = Instant::now();
        let mut progressed = false;
        while run_started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                child.try_wait().unwrap().is_none(),
                "ymera run exited on its own"
            );
            if commit_records(lake, table) > before {
                progressed = true;
                break;
            }
            if producer.is_finished() && kills >= min_kills {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        if progressed {
            kills += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "crash loop took too long"
        );
    }
    kills
}

/// A topic of [`PARTITIONS`] partitions on a fresh `ymera broker`, and the seq pipeline
/// `name` reading it in chunks of `max_records` (short session, DLQ table), with its lake.
fn crash_pipeline(
    name: &str,
    max_records: usize,
) -> (DevBroker, String, tempfile::TempDir, tempfile::TempDir) {
    let topic = unique(name);
    let broker = DevBroker::start(&[(&topic, PARTITIONS)]);
    let dir = pipeline_dir(&with_short_session(&pipeline_yaml(
        name,
        &topic,
        &unique("g"),
        &format!("{{ path: _dlq/{name} }}"),
        &format!("batch: {{ max_records: {max_records}, max_wait: 200ms }}"),
    )));
    (broker, topic, dir, tempfile::tempdir().unwrap())
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let rt = runtime();
    let name = "crash_seq";
    let (broker, topic, dir, lake) = crash_pipeline(name, 300);
    let bootstrap = broker.bootstrap.clone();

    // a steady stream over all the kills, 44 s in all
    let producer = steady_producer(&bootstrap, &topic, RECORDS);
    // the file-name oracle below needs every file a segment: no compaction
    let env = [("YMERA__LAKE__OPTIMIZE__ENABLED", "false".into())];
    let kills = kill_loop(
        &bootstrap,
        dir.path(),
        lake.path(),
        name,
        &env,
        &producer,
        6,
        7,
    );
    producer.join().unwrap();
    assert!(
        kills >= 5,
        "only {kills} kills landed on a process that was publishing"
    );
    let last_run = std::time::SystemTime::now();
    run_until_idle_env(&bootstrap, dir.path(), lake.path(), &env);
    drop(rt);
    assert_exactly_once(&lake.path().join(name), RECORDS);
    // killed runs leave staging files (removed once 15 minutes old); the clean run none
    let staging: Vec<_> = std::fs::read_dir(lake.path().join("_staging"))
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= last_run)
        })
        .collect();
    assert!(
        staging.is_empty(),
        "staging files left by the clean run: {staging:?}"
    );
}

/// Background compaction every second while ingest runs and SIGKILL lands at random
/// moments (compactions killed mid-run included): every seq once, read from the content of
/// the live files whatever their names (compacted files have others), the Kafka positions
/// in the log cover every offset, and the table holds fewer files than ingest wrote.
#[test]
fn kill_9_during_background_compaction_loses_and_duplicates_nothing() {
    const N: i64 = 12_000;
    let rt = runtime();
    let name = "compact_seq";
    let (broker, topic, dir, lake) = crash_pipeline(name, 200);
    let bootstrap = broker.bootstrap.clone();
    let env = [
        ("YMERA__LAKE__OPTIMIZE__INTERVAL", "1s".into()),
        ("YMERA__LAKE__OPTIMIZE__MIN_FILES", "3".into()),
    ];
    let producer = steady_producer(&bootstrap, &topic, N);
    let kills = kill_loop(
        &bootstrap,
        dir.path(),
        lake.path(),
        name,
        &env,
        &producer,
        6,
        11,
    );
    producer.join().unwrap();
    assert!(kills >= 5, "only {kills} kills landed on a working process");
    run_until_idle_env(&bootstrap, dir.path(), lake.path(), &env);
    drop(rt);
    let table = lake.path().join(name);
    // every seq once, from the files' content
    let mut seen = std::collections::HashSet::new();
    let mut rows = 0;
    for f in parquet_files(&table) {
        for b in read_parquet(&f) {
            let seq = b
                .column_by_name("seq")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap()
                .clone();
            rows += seq.len();
            seen.extend(seq.values().iter().copied());
        }
    }
    assert_eq!(rows, seen.len(), "duplicated records in the lake");
    assert_eq!(seen, (0..N).collect(), "missing records in the lake");
    // the positions committed with the files cover every offset of every partition
    let store = ymera_lake::Lake::open(lake.path().to_str().unwrap()).unwrap();
    let ids: Vec<String> = (0..PARTITIONS)
        .map(|p| ymera_lake::delta::app_id(name, &topic, p))
        .collect();
    let pos = runtime()
        .block_on(ymera_lake::delta::positions(&store, name, &ids))
        .unwrap();
    assert_eq!(pos.values().map(|last| last + 1).sum::<i64>(), N, "{pos:?}");
    // compactions landed, and the table holds fewer files than ingest added
    let history = runtime()
        .block_on(ymera_lake::maintain::history(&store, name, None))
        .unwrap();
    let compactions = history.iter().filter(|c| c.operation == "OPTIMIZE").count();
    let written: u64 = history
        .iter()
        .filter(|c| c.operation == "WRITE")
        .map(|c| c.files_added)
        .sum();
    let live = parquet_files(&table).len() as u64;
    assert!(compactions > 0, "no compaction landed");
    assert!(live < written, "{live} live files of {written} written");
    eprintln!("{kills} kills, {compactions} compactions, {written} files written, {live} live");
}

#[test]
fn two_replicas_rebalance_without_loss_or_duplicates() {
    let topic = unique("rebal");
    let broker = DevBroker::start(&[(&topic, PARTITIONS)]);
    let bootstrap = broker.bootstrap.clone();
    let name = "rebal_seq";
    let group = unique("g");
    let dir = pipeline_dir(&pipeline_yaml(
        name,
        &topic,
        &group,
        "{ path: _dlq/rebal_seq }",
        "batch: { max_records: 300, max_wait: 200ms }",
    ));
    let lake = tempfile::tempdir().unwrap();
    let n = 8_000;
    let producer_topic = topic.clone();
    let producer_brokers = bootstrap.clone();
    let producer = std::thread::spawn(move || {
        let rt = runtime();
        for start in (0..n).step_by(500) {
            let batch: Vec<_> = (start..start + 500).map(seq_record).collect();
            produce_to(&rt, &producer_brokers, &producer_topic, &batch);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut a = spawn_run_on(&bootstrap, dir.path(), lake.path(), &[]);
    std::thread::sleep(Duration::from_secs(3));
    // a second replica joins: the group rebalances partitions between them
    let mut b = spawn_run_on(&bootstrap, dir.path(), lake.path(), &[]);
    std::thread::sleep(Duration::from_secs(4));
    // the first one is killed outright: its partitions move to the second
    a.kill().unwrap();
    let _ = a.wait();
    producer.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // graceful stop of the second (SIGTERM): flush, publish, commit, exit 0
    let pid = b.id().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let status =
        wait_timeout(&mut b, Duration::from_secs(60)).expect("SIGTERM did not stop ymera run");
    assert!(
        status.success(),
        "ymera run exited with {status} after SIGTERM"
    );
    run_until_idle_on(&bootstrap, dir.path(), lake.path());
    assert_exactly_once(&lake.path().join(name), n);
}

#[test]
fn two_runs_into_empty_lakes_write_the_same_rows() {
    let rt = runtime();
    let topic = unique("determ");
    create_topic(&rt, &topic, 2);
    let records: Vec<_> = (0..3000).map(seq_record).collect();
    produce(&rt, &topic, &records);
    let mut rows = Vec::new();
    for _ in 0..2 {
        let dir = pipeline_dir(&pipeline_yaml(
            "determ",
            &topic,
            &unique("g"),
            "{ path: _dlq/determ }",
            "",
        ));
        let lake = tempfile::tempdir().unwrap();
        run_until_idle(dir.path(), lake.path());
        let mut per_partition: Vec<(i32, Vec<String>)> = Vec::new();
        let mut files: Vec<_> = parquet_files(&lake.path().join("determ"));
        files.sort_by_key(|f| {
            parse_name(f.file_name().unwrap().to_str().unwrap()).map(|(_, p, a, _)| (p, a))
        });
        for f in files {
            let (_, p, _, _) = parse_name(f.file_name().unwrap().to_str().unwrap()).unwrap();
            let mut text = Vec::new();
            for b in read_parquet(&f) {
                let mut w = arrow::json::LineDelimitedWriter::new(&mut text);
                w.write(&b).unwrap();
                w.finish().unwrap();
            }
            let lines: Vec<String> = String::from_utf8(text)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            match per_partition.iter_mut().find(|(q, _)| *q == p) {
                Some((_, v)) => v.extend(lines),
                None => per_partition.push((p, lines)),
            }
        }
        for (_, v) in per_partition.iter_mut() {
            v.sort_by_key(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|j| j["seq"].as_i64())
            });
        }
        per_partition.sort_by_key(|(p, _)| *p);
        assert_eq!(
            per_partition.iter().map(|(_, v)| v.len()).sum::<usize>(),
            3000
        );
        rows.push(per_partition);
    }
    assert_eq!(
        rows[0], rows[1],
        "two runs over the same topic wrote different rows"
    );
}

#[test]
fn group_commits_land_on_tansu() {
    let SeqLake { lake, topic, group } = seq_lake("commits", 2000, PARTITIONS);
    // the group offset of each partition is the next offset after the lake's last file
    let ends = assert_contiguous(&lake.path().join("commits"));
    assert_eq!(ends.values().map(|l| l + 1).sum::<i64>(), 2000);
    let offsets = committed(&group, &topic);
    assert_eq!(offsets.len(), PARTITIONS as usize);
    for (p, offset) in offsets {
        assert_eq!(
            offset,
            ends.get(&p).map(|l| l + 1),
            "partition {p}: committed offset differs from the lake"
        );
    }
}

/// A zombie writer: replica A is frozen (SIGSTOP) past its session while it holds the only
/// partition, B takes the partition over and commits, then A thaws with its open segment
/// and tries to publish it. The Delta txn check stops A's overlap (its commit is dropped, or
/// A stops with an error); a restart finishes the topic: nothing twice, nothing lost.
/// On `ymera broker` (librdkafka's mock cluster), which expels a frozen member on time.
#[test]
fn a_frozen_replica_that_thaws_after_losing_its_partition_writes_nothing_twice() {
    let topic = unique("zombie");
    let broker = DevBroker::start(&[(&topic, 1)]);
    let bootstrap = broker.bootstrap.clone();
    let name = "zombie_seq";
    let dir = pipeline_dir(&with_short_session(&pipeline_yaml(
        name,
        &topic,
        &unique("g"),
        "{ path: _dlq/zombie_seq }",
        "batch: { max_records: 100, max_wait: 100ms }",
    )));
    let lake = tempfile::tempdir().unwrap();
    let n = 12_000; // about 26 s of production: past the freeze and the takeover
    let producer = steady_producer(&bootstrap, &topic, n);
    let signal = |pid: u32, sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    };
    let mut a = spawn_run_on(&bootstrap, dir.path(), lake.path(), &[]);
    // A owns the partition and publishes
    let started = Instant::now();
    while commit_records(lake.path(), name) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "A never published"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(400)); // mid-segment
    signal(a.id(), "-STOP");
    let frozen_at = commit_records(lake.path(), name);
    // B joins; once A's session has expired the partition is B's
    let mut b = spawn_run_on(&bootstrap, dir.path(), lake.path(), &[]);
    let started = Instant::now();
    while commit_records(lake.path(), name) < frozen_at + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B never took over from the frozen A"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A thaws with its open segment and publishes or learns of the loss
    signal(a.id(), "-CONT");
    std::thread::sleep(Duration::from_secs(5));
    producer.join().unwrap();
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    run_until_idle_on(&bootstrap, dir.path(), lake.path());
    assert_exactly_once(&lake.path().join(name), n);
}

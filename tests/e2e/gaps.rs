//! A partition whose resume position is not in the log any more (retention, truncation, a
//! re-created topic) is quarantined: readiness and a metric name it, the other partitions
//! keep running, and nothing is read from elsewhere. On librdkafka's mock cluster
//! (`ymera broker`), since a second, empty cluster stands in for the re-created topic.

use std::time::Duration;

use crate::support::*;

#[test]
fn a_partition_whose_position_left_the_log_is_quarantined_and_the_rest_run_on() {
    let rt = runtime();
    let name = "gap_seq";
    let topic = unique("gaps");
    let group = unique("g");
    let dir = pipeline_dir(&pipeline_yaml(
        name,
        &topic,
        &group,
        &format!("{{ path: _dlq/{name} }}"),
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    let table = lake.path().join(name);

    // the first cluster: 150 records over 3 partitions, all in the lake
    let first = DevBroker::start(&[(&topic, 3)]);
    produce_to(
        &rt,
        &first.bootstrap,
        &topic,
        &(0..150).map(seq_record).collect::<Vec<_>>(),
    );
    let placed = seq_positions(&first.bootstrap, &topic);
    run_until_idle_on(&first.bootstrap, dir.path(), lake.path());
    let held = assert_contiguous(&table);
    let ones: Vec<i64> = (0..150).filter(|s| placed[s].0 == 1).collect();
    assert_eq!(held[&1] + 1, ones.len() as i64);
    drop(first);

    // the topic comes back empty (a second cluster): partition 1 gets twice the records it
    // had (the partitioner is the key's hash, so the same keys land on it again), partitions
    // 0 and 2 get none, so their stored positions are past their log ends (librdkafka then
    // reports one error per partition, neither naming it)
    let second = DevBroker::start(&[(&topic, 3)]);
    let again: Vec<(Vec<u8>, Vec<u8>)> = (0..2 * ones.len())
        .map(|i| {
            let key = format!("k{}", ones[i % ones.len()]).into_bytes();
            (key, seq_record(1000 + i as i64).1)
        })
        .collect();
    produce_to(&rt, &second.bootstrap, &topic, &again);

    let port = free_port();
    let mut child = run_command(
        &second.bootstrap,
        dir.path(),
        lake.path(),
        &format!("127.0.0.1:{port}"),
        &[],
    )
    .spawn()
    .unwrap();
    let quarantined = wait_for(Duration::from_secs(60), || {
        http_get(port, "/health/ready").is_some_and(|(s, b)| {
            s == 503
                && b.contains(&format!("{topic}/0"))
                && b.contains(&format!("{topic}/2"))
                && b.contains("accept-gap")
        })
    });
    assert!(
        quarantined,
        "readiness does not name the partition: {:?}",
        http_get(port, "/health/ready")
    );
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for p in [0, 2] {
        let line = format!(
            "ymera_partition_quarantined{{pipeline=\"{name}\",topic=\"{topic}\",partition=\"{p}\"}} 1"
        );
        assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
    }
    // partition 1 goes on: its records past the stored position reach the lake
    let want: Vec<i64> = (ones.len()..2 * ones.len())
        .map(|i| 1000 + i as i64)
        .collect();
    let went_on = wait_for(Duration::from_secs(60), || {
        let got = seqs_by_partition(&table);
        want.iter()
            .all(|s| got.get(&1).is_some_and(|v| v.contains(s)))
    });
    assert!(
        went_on,
        "partition 1 stopped too: {:?}",
        seqs_by_partition(&table).get(&1)
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the process exited instead of quarantining one partition"
    );
    // nothing of partitions 0 and 2 was read from elsewhere
    let by = seqs_by_partition(&table);
    for p in [0, 2] {
        let seqs = by.get(&p).cloned().unwrap_or_default();
        assert!(seqs.iter().all(|s| *s < 150), "{p}: {seqs:?}");
    }
    let _ = child.kill();
    let _ = child.wait();

    // with --stop-when-idle the run ends, and says so in its exit status and on stderr
    let mut child = run_command(
        &second.bootstrap,
        dir.path(),
        lake.path(),
        "127.0.0.1:0",
        &["--stop-when-idle", "3s"],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = wait_timeout(&mut child, Duration::from_secs(120)).expect("run did not stop");
    let said = reader.join().unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    for p in [0, 2] {
        let line = format!(
            "error: pipeline {name}: partition {topic}/{p} was quarantined: its next offset"
        );
        assert!(said.contains(&line), "no `{line}` in:\n{said}");
    }

    // the operator accepts the gap of partition 0: it resumes at the log's start (offset 0
    // of the new topic) in the sink table and the DLQ table, audited
    let warehouse = format!("sqlite://{}/w.db", lake.path().display());
    let accept = |partition: &str| {
        ymera()
            .args([
                "lake",
                "accept-gap",
                name,
                "--topic",
                &topic,
                "--partition",
                partition,
            ])
            .arg("--pipelines")
            .arg(dir.path())
            .env("YMERA_TEST_BROKERS", &second.bootstrap)
            .env("YMERA__LAKE__URL", lake.path())
            .env("YMERA__WAREHOUSE__URL", &warehouse)
            .env("YMERA__LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };
    let out = accept("0");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "accept-gap failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("table {name}: {topic}/0 moved from offset "))
            && said.contains(&format!("table _dlq/{name}: {topic}/0 moved from "))
            && said.contains("to offset 0"),
        "{said}"
    );
    // partition 1 has no gap: moving it is refused
    let out = accept("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("there is no gap to accept"),
        "{err}"
    );
    let audited = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; print(sqlite3.connect('{}/w.db').execute(\"SELECT action, target, outcome FROM _ymera_audit\").fetchall())",
            lake.path().display()
        ))
        .output()
        .unwrap();
    let audited = String::from_utf8_lossy(&audited.stdout).to_string();
    assert!(
        audited.contains(&format!("('lake.accept_gap', '{name}/{topic}/0', 'ok')")),
        "{audited}"
    );
    // new records of partition 0 are read from there
    let zeros: Vec<i64> = (0..150).filter(|s| placed[s].0 == 0).collect();
    let fresh: Vec<(Vec<u8>, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("k{}", zeros[i]).into_bytes(),
                seq_record(2000 + i as i64).1,
            )
        })
        .collect();
    produce_to(&rt, &second.bootstrap, &topic, &fresh);
    let out = accept("2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_until_idle_on(&second.bootstrap, dir.path(), lake.path());
    let p0 = seqs_by_partition(&table).remove(&0).unwrap_or_default();
    assert!((2000..2005).all(|s| p0.contains(&s)), "{p0:?}");
}

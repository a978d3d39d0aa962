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

    // the first cluster: 100 records over 2 partitions, all in the lake
    let first = DevBroker::start(&[(&topic, 2)]);
    produce_to(
        &rt,
        &first.bootstrap,
        &topic,
        &(0..100).map(seq_record).collect::<Vec<_>>(),
    );
    let placed = seq_positions(&first.bootstrap, &topic);
    run_until_idle_on(&first.bootstrap, dir.path(), lake.path());
    let held = assert_contiguous(&table);
    let ones: Vec<i64> = (0..100).filter(|s| placed[s].0 == 1).collect();
    assert_eq!(held[&1] + 1, ones.len() as i64);
    drop(first);

    // the topic comes back empty (a second cluster): partition 1 gets twice the records it
    // had (the partitioner is the key's hash, so the same keys land on it again), partition
    // 0 gets none, so its stored position is past its log end
    let second = DevBroker::start(&[(&topic, 2)]);
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
            s == 503 && b.contains(&format!("{topic}/0")) && b.contains("accept-gap")
        })
    });
    assert!(
        quarantined,
        "readiness does not name the partition: {:?}",
        http_get(port, "/health/ready")
    );
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    let line = format!(
        "ymera_partition_quarantined{{pipeline=\"{name}\",topic=\"{topic}\",partition=\"0\"}} 1"
    );
    assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
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
    // nothing of partition 0 was read from elsewhere
    let p0: Vec<i64> = seqs_by_partition(&table).remove(&0).unwrap_or_default();
    assert!(p0.iter().all(|s| *s < 100), "{p0:?}");
    let _ = child.kill();
    let _ = child.wait();

    // with --stop-when-idle the run ends, and says so in its exit status
    let mut child = run_command(
        &second.bootstrap,
        dir.path(),
        lake.path(),
        "127.0.0.1:0",
        &["--stop-when-idle", "3s"],
    )
    .spawn()
    .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(120)).expect("run did not stop");
    assert!(
        !status.success(),
        "a run with a quarantined partition exited 0"
    );

    // the operator accepts the gap: partition 0 resumes at the log's start (offset 0 of the
    // new topic), audited
    let warehouse = format!("sqlite://{}/w.db", lake.path().display());
    let out = ymera()
        .args([
            "lake",
            "accept-gap",
            name,
            "--topic",
            &topic,
            "--partition",
            "0",
        ])
        .arg("--pipelines")
        .arg(dir.path())
        .env("YMERA_TEST_BROKERS", &second.bootstrap)
        .env("YMERA__LAKE__URL", lake.path())
        .env("YMERA__WAREHOUSE__URL", &warehouse)
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "accept-gap failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("table {name}: {topic}/0 moved from offset "))
            && said.contains("to offset 0"),
        "{said}"
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
    let zeros: Vec<i64> = (0..100).filter(|s| placed[s].0 == 0).collect();
    let fresh: Vec<(Vec<u8>, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("k{}", zeros[i]).into_bytes(),
                seq_record(2000 + i as i64).1,
            )
        })
        .collect();
    produce_to(&rt, &second.bootstrap, &topic, &fresh);
    run_until_idle_on(&second.bootstrap, dir.path(), lake.path());
    let p0 = seqs_by_partition(&table).remove(&0).unwrap_or_default();
    assert!((2000..2005).all(|s| p0.contains(&s)), "{p0:?}");
}

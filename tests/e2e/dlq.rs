//! `ymera dlq inspect|replay`: records that failed in decode and in a stage are counted
//! and shown with their source position; after the stage is fixed, a replay writes the
//! ones that now pass (and only those), and a second replay adds nothing.

use std::path::Path;
use std::process::Stdio;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

use crate::support::*;

fn pipeline(topic: &str, group: &str, sql: &str) -> String {
    format!(
        r#"name: dlqtest
source:
  kafka:
    brokers: "${{YMERA_TEST_BROKERS}}"
    topics: [{topic}]
    group_id: {group}
  schema:
    seq: int64
    ts: timestamp_us
    d: int64
  event_time: ts
transforms:
  - name: out
    sql: "{sql}"
sinks:
  - lake: {{ table: dlqtest, partition_by: [dt], rolling: {{ max_interval: 1s }} }}
dlq: {{ path: _dlq/dlqtest }}
"#
    )
}

fn seqs(table: &Path) -> Vec<i64> {
    let mut out: Vec<i64> = parquet_files(table)
        .iter()
        .flat_map(|f| read_parquet(f))
        .flat_map(|b: RecordBatch| {
            b.column_by_name("seq")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    out.sort_unstable();
    out
}

fn dlq(args: &[&str], dir: &Path, lake: &Path, bootstrap: &str) -> String {
    let out = ymera()
        .arg("dlq")
        .args(args)
        .arg("--pipelines")
        .arg(dir)
        .env("YMERA_TEST_BROKERS", bootstrap)
        .env("YMERA__LAKE__URL", lake)
        .env(
            "YMERA__WAREHOUSE__URL",
            format!("sqlite://{}/w.db", lake.display()),
        )
        .env("YMERA__LOG__LEVEL", "warn")
        .stderr(Stdio::inherit())
        .output()
        .expect("run ymera dlq");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "ymera dlq {args:?} failed:\n{stdout}");
    stdout
}

#[test]
fn inspect_counts_and_replay_writes_fixed_records_once() {
    let rt = runtime();
    let topic = unique("dlq");
    let broker = DevBroker::start(&[(&topic, 1)]);
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = (0..10)
        .map(|seq| {
            let ts = 1_764_064_800_000_000i64 + seq * 1_000_000;
            (
                format!("k{seq}").into_bytes(),
                format!(r#"{{"seq":{seq},"ts":{ts},"d":{}}}"#, seq % 3).into_bytes(),
            )
        })
        .collect();
    // a number written as a string: a decode error no stage fix can cure
    records.push((
        b"bad".to_vec(),
        br#"{"seq":"10","ts":1764064810000000,"d":1}"#.to_vec(),
    ));
    produce_to(&rt, &broker.bootstrap, &topic, &records);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dlqtest.yaml");
    std::fs::write(
        &file,
        pipeline(
            &topic,
            &unique("g"),
            "SELECT seq, ts, 100 / d AS r FROM input",
        ),
    )
    .unwrap();
    let lake = tempfile::tempdir().unwrap();
    run_until_idle_on(&broker.bootstrap, dir.path(), lake.path());
    let table = lake.path().join("dlqtest");
    assert_eq!(seqs(&table), [1, 2, 4, 5, 7, 8], "d = 0 divides by zero");

    let shown = dlq(
        &["inspect", "dlqtest"],
        dir.path(),
        lake.path(),
        &broker.bootstrap,
    );
    assert!(shown.contains("5 dead-lettered record(s)"), "{shown}");
    assert!(shown.contains("4  lake      transform"), "{shown}");
    assert!(shown.contains("Divide by zero"), "{shown}");
    assert!(shown.contains("1  lake      decode"), "{shown}");
    assert!(
        shown.contains(&format!("{topic}/0/10")),
        "the source position is shown: {shown}"
    );

    // the stage is fixed; the decode failure stays
    std::fs::write(
        &file,
        pipeline(
            &topic,
            &unique("g"),
            "SELECT seq, ts, CASE WHEN d = 0 THEN NULL ELSE 100 / d END AS r FROM input",
        ),
    )
    .unwrap();
    let replayed = dlq(
        &["replay", "dlqtest"],
        dir.path(),
        lake.path(),
        &broker.bootstrap,
    );
    assert!(
        replayed.contains(
            "5 dead letter(s) considered, 0 already replayed, 4 replayed now, 1 failed again"
        ),
        "{replayed}"
    );
    assert!(
        replayed.contains(&format!("still failing {topic}/0/10")),
        "{replayed}"
    );
    assert_eq!(seqs(&table), (0..10).collect::<Vec<_>>());

    let again = dlq(
        &["replay", "dlqtest"],
        dir.path(),
        lake.path(),
        &broker.bootstrap,
    );
    assert!(
        again.contains(
            "5 dead letter(s) considered, 4 already replayed, 0 replayed now, 1 failed again"
        ),
        "{again}"
    );
    assert_eq!(
        seqs(&table),
        (0..10).collect::<Vec<_>>(),
        "a second replay added rows"
    );
    let shown = dlq(
        &["inspect", "dlqtest"],
        dir.path(),
        lake.path(),
        &broker.bootstrap,
    );
    assert!(
        shown.contains("4 of them were replayed successfully already"),
        "{shown}"
    );
}

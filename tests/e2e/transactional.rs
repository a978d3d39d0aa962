//! A topic written by a transactional producer (confluent-kafka, Python: the librdkafka
//! client most such producers are) holds a commit marker after each transaction, at an
//! offset no consumer ever sees. `ymera run --stop-when-idle` must still finish, keep
//! every record once, and not warn about each marker. On tansu (`YMERA_TEST_BROKERS`),
//! which writes the markers (librdkafka's mock cluster does not). Aborted transactions are
//! not tested: tansu 0.6 serves their records to read_committed consumers too (checked
//! with confluent-kafka's own consumer), so the result would be tansu's, not ours.

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

/// Produces seq records 0..100 in 10 committed transactions with confluent-kafka.
const PRODUCER: &str = r#"
import json, sys
from confluent_kafka import Producer
brokers, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": brokers, "transactional.id": "ymera-test-" + topic})
p.init_transactions()
def record(seq):
    ts = 1_764_064_800_000_000 + seq * 1_000_000
    value = {"seq": seq, "ts": ts, "service": "svc-%02d" % (seq % 7), "latency_ms": seq % 300 + 0.5}
    p.produce(topic, key="k%d" % seq, value=json.dumps(value))
for t in range(10):
    p.begin_transaction()
    for seq in range(t * 10, t * 10 + 10):
        record(seq)
    p.commit_transaction()
"#;

#[test]
fn stop_when_idle_finishes_on_a_transactional_topic_without_a_warning_per_marker() {
    let rt = runtime();
    let name = "txn_seq";
    let topic = unique("txn");
    create_topic(&rt, &topic, 1);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(PRODUCER)
        .arg(brokers())
        .arg(&topic)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the transactional producer failed (scripts/test installs confluent-kafka): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = pipeline_dir(&pipeline_yaml(
        name,
        &topic,
        &unique("g"),
        &format!("{{ path: _dlq/{name} }}"),
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    let mut child = run_command(
        &brokers(),
        dir.path(),
        lake.path(),
        "127.0.0.1:0",
        &["--stop-when-idle", "3s"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut child, Duration::from_secs(90));
    if status.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let logged = reader.join().unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "ymera run --stop-when-idle did not finish on a transactional topic: {status:?}\n{logged}"
    );
    let warnings: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warnings.is_empty(), "warnings: {warnings:#?}");
    let mut seqs = seqs_by_partition(&lake.path().join(name))
        .remove(&0)
        .unwrap_or_default();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..100).collect::<Vec<i64>>(), "every record, once");
}

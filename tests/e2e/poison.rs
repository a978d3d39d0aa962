//! Bad records: 1% malformed or schema-violating records interleaved. The DLQ holds
//! exactly those, byte-identical, with their context; no valid record is lost; the
//! partition keeps flowing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use arrow::array::{Array, BinaryArray, Int32Array, Int64Array, StringArray};

use crate::support::*;

type KeyValue = (Vec<u8>, Vec<u8>);

/// 10,000 records, every 100th one bad in one of several ways. Returns records and the
/// indices of the bad ones.
fn poisoned(n: i64) -> (Vec<KeyValue>, HashSet<i64>) {
    let mut records = Vec::new();
    let mut bad = HashSet::new();
    let mut seq = 0;
    for i in 0..n {
        if i % 100 == 37 {
            bad.insert(i);
            let value: Vec<u8> = match (i / 100) % 5 {
                0 => b"{not json".to_vec(),
                1 => {
                    format!(r#"{{"seq":"{i}","ts":1,"service":"s","latency_ms":1.0}}"#).into_bytes()
                } // number as string
                2 => br#"{"ts":1,"service":"s","latency_ms":1.0}"#.to_vec(), // missing field
                3 => br#"{"seq":1.5,"ts":1,"service":"s","latency_ms":1.0}"#.to_vec(), // float for int64
                _ => vec![0xff, 0xfe, b'{'],                                           // not UTF-8
            };
            records.push((format!("bad{i}").into_bytes(), value));
        } else {
            records.push(seq_record(seq));
            seq += 1;
        }
    }
    (records, bad)
}

#[test]
fn bad_records_go_to_the_dlq_table_byte_identical_with_context() {
    let rt = runtime();
    let topic = unique("poison");
    create_topic(&rt, &topic, 4);
    let (records, bad) = poisoned(10_000);
    produce(&rt, &topic, &records);
    let name = "poison_seq";
    let dir = pipeline_dir(&pipeline_yaml(
        name,
        &topic,
        &unique("g"),
        "{ path: _dlq/poison_seq }",
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    run_until_idle(dir.path(), lake.path());

    // every valid record once
    let good = records.len() as i64 - bad.len() as i64;
    let seen: Vec<i64> = seqs_by_partition(&lake.path().join(name))
        .into_values()
        .flatten()
        .collect();
    let unique_seen: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len() as i64, good);
    assert_eq!(unique_seen.len() as i64, good);

    // the DLQ holds exactly the bad ones, bytes untouched, with topic/partition/offset
    let bad_values: HashMap<Vec<u8>, Vec<u8>> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| bad.contains(&(*i as i64)))
        .map(|(_, (k, v))| (k.clone(), v.clone()))
        .collect();
    let mut dead = 0;
    for f in parquet_files(&lake.path().join("_dlq").join(name)) {
        for b in read_parquet(&f) {
            let keys = b
                .column_by_name("key")
                .unwrap()
                .as_any()
                .downcast_ref::<BinaryArray>()
                .unwrap();
            let values = b
                .column_by_name("value")
                .unwrap()
                .as_any()
                .downcast_ref::<BinaryArray>()
                .unwrap();
            let stage = b
                .column_by_name("ymera_error_stage")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let msg = b
                .column_by_name("ymera_error_message")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let t = b
                .column_by_name("ymera_source_topic")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let p = b
                .column_by_name("ymera_source_partition")
                .unwrap()
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap();
            let o = b
                .column_by_name("ymera_source_offset")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 0..b.num_rows() {
                dead += 1;
                let key = keys.value(i).to_vec();
                let expected = bad_values.get(&key).unwrap_or_else(|| {
                    panic!("unexpected DLQ key {:?}", String::from_utf8_lossy(&key))
                });
                assert_eq!(
                    values.value(i),
                    expected.as_slice(),
                    "DLQ value not byte-identical"
                );
                assert_eq!(stage.value(i), "decode");
                assert!(!msg.value(i).is_empty());
                assert_eq!(t.value(i), topic);
                assert!((0..4).contains(&p.value(i)));
                assert!(o.value(i) >= 0);
            }
        }
    }
    assert_eq!(dead, bad.len(), "DLQ row count");
}

#[test]
fn bad_records_go_to_the_dlq_topic_with_headers() {
    let rt = runtime();
    let topic = unique("poisont");
    let dlq_topic = format!("{topic}.dlq");
    create_topic(&rt, &topic, 2);
    create_topic(&rt, &dlq_topic, 1);
    let (records, bad) = poisoned(2_000);
    produce(&rt, &topic, &records);
    let dir = pipeline_dir(&pipeline_yaml(
        "poison_topic",
        &topic,
        &unique("g"),
        &format!("{{ topic: {dlq_topic} }}"),
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    run_until_idle(dir.path(), lake.path());
    let dead = ymera_ingest::consume::read_topic(
        &brokers(),
        &Default::default(),
        &dlq_topic,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(dead.len(), bad.len());
    let sent: HashMap<Vec<u8>, Vec<u8>> = records.iter().cloned().collect();
    for (_, r) in &dead {
        let key = r.key.clone().unwrap();
        assert_eq!(
            r.value.as_ref(),
            sent.get(&key),
            "DLQ value differs from the original"
        );
        let h: HashMap<&str, String> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).to_string()))
            .collect();
        assert_eq!(h["ymera.error.stage"], "decode");
        assert_eq!(h["ymera.source.topic"], topic);
        assert_eq!(h["ymera.pipeline"], "poison_topic");
        for k in [
            "ymera.error.message",
            "ymera.source.partition",
            "ymera.source.offset",
            "ymera.failed_at",
        ] {
            assert!(
                h.get(k).is_some_and(|v| !v.is_empty()),
                "header {k} missing"
            );
        }
    }
}

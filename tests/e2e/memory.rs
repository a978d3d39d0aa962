//! One memory budget per process (`run.memory_limit`): a burst over many partitions and
//! sinks, each of whose rolling settings would hold everything until the end. Nothing is
//! lost, and the peak resident set is printed. The bound asserted, 1 GiB, guards against
//! the unbounded growth of before (17.8 GB on a bulk load); it is not the issue's goal of
//! 512 MiB, which this does not reach reliably yet (measured at a 128 MiB budget: 518 MiB
//! with background compaction off, as here, 604-690 MiB with it on; 725-746 MiB with no
//! budget; 275 MiB at 8 MiB; see the notes of the stop).
//! On tansu (`YMERA_TEST_BROKERS`).

use std::ffi::OsString;
use std::time::Duration;

use crate::support::*;

/// Records of 1 KB: `seq` records whose `service` carries 1,000 characters that zstd
/// cannot squeeze to nothing.
fn kilobyte_record(seq: i64) -> (Vec<u8>, Vec<u8>) {
    let ts = 1_764_064_800_000_000i64 + seq * 1_000;
    let mut x = seq as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let pad: String = (0..1000)
        .map(|_| {
            // xorshift: different text in every record
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let value = format!(r#"{{"seq":{seq},"ts":{ts},"service":"{pad}","latency_ms":1.5}}"#);
    (format!("k{seq}").into_bytes(), value.into_bytes())
}

/// The peak resident set (VmHWM) of `pid` as last read, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_burst_over_32_partitions_and_3_sinks_stays_within_the_memory_budget() {
    // YMERA_TEST_MEMORY_RECORDS measures another burst (e.g. 10: the process at rest)
    let n: i64 = std::env::var("YMERA_TEST_MEMORY_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = runtime();
    let name = "mem_seq";
    let topic = unique("mem");
    create_topic(&rt, &topic, 32);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        produce(
            &rt,
            &topic,
            &chunk
                .iter()
                .map(|s| kilobyte_record(*s))
                .collect::<Vec<_>>(),
        );
    }
    // three lake sinks whose rolling would keep the whole burst open until the end
    let rolling = "rolling: { max_rows: 10000000, max_bytes: 4GiB, max_interval: 30m }";
    let sinks = ["a", "b", "c"]
        .iter()
        .map(|t| format!("  - lake: {{ table: {name}_{t}, {rolling} }}"))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = pipeline_dir(&pipeline_yaml_with_sinks(
        name,
        &topic,
        &unique("g"),
        &sinks,
        &format!("{{ path: _dlq/{name} }}"),
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    // YMERA_TEST_MEMORY_LIMIT measures another budget (e.g. 100GiB: none to speak of)
    let limit = std::env::var("YMERA_TEST_MEMORY_LIMIT").unwrap_or_else(|_| "128MiB".into());
    let mut env: Vec<(&str, OsString)> = vec![("YMERA__RUN__MEMORY_LIMIT", limit.clone().into())];
    // background compaction off (YMERA_TEST_OPTIMIZE=true turns it on): the files are
    // read back by name below, and compaction would replace them
    let optimize = std::env::var("YMERA_TEST_OPTIMIZE").unwrap_or_else(|_| "false".into());
    env.push(("YMERA__LAKE__OPTIMIZE__ENABLED", optimize.into()));
    let mut child = spawn_run_env(
        &brokers(),
        dir.path(),
        lake.path(),
        &["--stop-when-idle", "4s"],
        &env,
    );
    let pid = child.id();
    let mut peak = 0;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(p) = peak_rss(pid) {
            if std::env::var("YMERA_TEST_MEMORY_TRACE").is_ok() && p > peak {
                eprintln!(
                    "{:6.1} s  peak {} MiB",
                    started.elapsed().as_secs_f64(),
                    p >> 20
                );
            }
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "ymera run did not finish in 600 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "ymera run exited with {status}");
    let files = parquet_files(&lake.path().join(format!("{name}_a"))).len();
    eprintln!(
        "memory budget {limit}, 32 partitions x 3 sinks, {n} records of 1 KB: peak RSS {} MiB in {:.1} s, {files} files in table a",
        peak / (1 << 20),
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak <= 1 << 30,
        "peak RSS {} MiB is over 1 GiB",
        peak / (1 << 20)
    );
    for t in ["a", "b", "c"] {
        let by = seqs_by_partition(&lake.path().join(format!("{name}_{t}")));
        let mut all: Vec<i64> = by.into_values().flatten().collect();
        all.sort_unstable();
        assert_eq!(all.len() as i64, n, "table {t}");
        assert!(
            all.iter().copied().eq(0..n),
            "table {t}: records lost or doubled"
        );
    }
}

//! Cancellation and the deadline, measured as this process's CPU time: in a test binary
//! of its own, so no other test's work is counted.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ymera_lake::Lake;
use ymera_query::{Analyst, Cancel, Limits, QueryError};

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // the fields after the command name, which is in parentheses
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A lake with one Delta table `big` of `rows` rows.
async fn lake(rows: i64) -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("service", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| ["api", "auth", "search"][i as usize % 3]),
            )),
        ],
    )
    .unwrap();
    let spec = ymera_lake::TableSpec {
        table: "big".into(),
        partition_by: Vec::new(),
        event_time: None,
        zstd_level: 3,
        schema,
    };
    ymera_lake::delta::append(
        &lake,
        &spec,
        vec![batch],
        "t+0+0-1.parquet",
        Vec::new(),
        Vec::new(),
    )
    .await
    .unwrap();
    (dir, lake)
}

async fn analyst(lake: &Lake, limits: Limits) -> Analyst {
    Analyst::open(lake, None, limits).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_timed_out_query_stops_working_within_a_second() {
    let (_dir, lake) = lake(200_000).await;
    let a = Arc::new(
        analyst(
            &lake,
            Limits {
                timeout: Duration::from_secs(2),
                ..Limits::default()
            },
        )
        .await,
    );
    let bomb = "SELECT count(*) FROM big x CROSS JOIN big y WHERE x.id + y.id >= 0";
    // dropped by its caller (a closed connection): the guard the caller held is dropped
    let cancel = Cancel::default();
    let guard = cancel.on_drop();
    let running = {
        let a = a.clone();
        tokio::spawn(async move { a.query_cancellable(bomb, &cancel).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_time() - before;
    eprintln!("CPU in the second after the drop: {used:?}");
    assert!(used < Duration::from_millis(300), "still working: {used:?}");
    // Its caller is gone, so the error is never seen. Over delta-rs's scan it is the
    // deadline's rather than "cancelled": the join's stream is not polled again until then,
    // idle (no CPU, measured above) but holding its memory.
    let e = running.await.unwrap().unwrap_err();
    assert!(
        e.to_string().contains("cancelled") || matches!(e, QueryError::Timeout(_)),
        "{e}"
    );
    // stopped by its deadline
    let e = a.query(bomb).await.unwrap_err();
    assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_time() - before;
    eprintln!("CPU in the second after the timeout: {used:?}");
    assert!(used < Duration::from_millis(300), "still working: {used:?}");
}

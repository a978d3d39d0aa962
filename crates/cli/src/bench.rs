//! `ymera bench`: decode -> SQL -> Parquet on the reference events (the same JSON the Python
//! peers in shared/bench process), per core, and end to end through a broker.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use ymera_ingest::decode::{JsonDecoder, UnknownFields};
use ymera_lake::{TableSpec, TableWriter};
use ymera_pipeline::load::{Loaded, Positions};

use crate::settings::Settings;
use crate::{EXIT_FAILURE, EXIT_OK};

/// The reference pipeline of the benchmark (mirrors shared/bench/peer_python_process.py).
pub const BENCH_PIPELINE: &str = r#"
name: bench
source:
  kafka: { brokers: "${YMERA_BENCH_BROKERS}", topics: [bench-events], group_id: ymera-bench }
  schema:
    event_id: utf8
    service: utf8
    project_id: utf8
    status: utf8
    latency_ms: float64
    bytes: int64
    ts: timestamp_us
  event_time: ts
  on_bad_record: drop
batch: { max_records: 50000 }
transforms:
  - name: out
    sql: "SELECT *, latency_ms > 250.0 AS slow FROM input WHERE status <> 'deleted'"
sinks:
  - lake: { table: bench_events, partition_by: [dt], rolling: { max_rows: 1000000, max_interval: 1s } }
"#;

/// The reference events: same shape and distribution as shared/bench/gen_events_file.py.
pub fn reference_events(n: usize) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let statuses = ["ok"; 17]
        .iter()
        .chain(["error", "deleted", "retry"].iter())
        .copied()
        .collect::<Vec<_>>();
    let t0 = 1_764_064_800i64;
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    (0..n)
        .map(|i| {
            let secs = t0 + (i as i64) / 50;
            let ts = chrono::DateTime::from_timestamp(secs, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S");
            let v = serde_json::json!({
                "event_id": format!("evt-{i:012}"),
                "service": format!("svc-{:02}", r.random_range(0..24)),
                "project_id": format!("prj-{:05}", r.random_range(0..5000)),
                "status": statuses[r.random_range(0..statuses.len())],
                "latency_ms": (r.random::<f64>() * 500.0 * 1000.0).round() / 1000.0,
                "bytes": r.random_range(100..2_000_000),
                "ts": format!("{ts}.{:06}Z", (i % 50) * 20000),
                "region": "eu-west-1",
                "host": format!("host-{:04}", r.random_range(0..2000)),
            });
            serde_json::to_vec(&v).unwrap_or_default()
        })
        .collect()
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub async fn bench(
    _settings: &Settings,
    n: usize,
    brokers: Option<String>,
    input: Option<std::path::PathBuf>,
) -> u8 {
    match run(n, brokers, input).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

async fn pipeline(brokers: &str) -> Result<ymera_pipeline::Pipeline, String> {
    let mut loaded = Loaded {
        file: "bench.yaml".into(),
        spec: None,
        positions: Positions::default(),
        diagnostics: Vec::new(),
        warnings: Vec::new(),
    };
    let b = brokers.to_string();
    let env = move |v: &str| (v == "YMERA_BENCH_BROKERS").then(|| b.clone());
    ymera_pipeline::load::load_str(&mut loaded, BENCH_PIPELINE, Some(&env));
    let p = ymera_pipeline::check(&mut loaded).await;
    p.ok_or_else(|| {
        loaded
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

async fn run(
    n: usize,
    brokers: Option<String>,
    input: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let events = match input {
        Some(path) => tokio::task::spawn_blocking(move || {
            std::fs::read(&path)
                .map(|b| {
                    b.split(|c| *c == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect::<Vec<_>>()
                })
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())??,
        None => tokio::task::spawn_blocking(move || reference_events(n))
            .await
            .map_err(|e| e.to_string())?,
    };
    let n = events.len();
    let bytes: usize = events.iter().map(Vec::len).sum();
    println!(
        "{n} reference events, {:.0} bytes each on average",
        bytes as f64 / n as f64
    );
    let p = pipeline("embedded").await?;
    let transform = p.transform();
    let spec: TableSpec = p.sinks[0].table.clone();
    let (mut t_decode, mut t_sql, mut t_parquet) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    // each chunk is one Delta commit with its txn, as `ymera run` publishes a segment
    let lake_dir = tempdir()?;
    let lake = ymera_lake::Lake::open(&lake_dir).map_err(|e| e.to_string())?;
    let mut tables = ymera_lake::delta::Tables::new(lake);
    let app_id = ymera_lake::delta::app_id("bench", "events", 0);
    let (mut t_commit, mut commits) = (Duration::ZERO, 0u32);
    let mut first = 0i64;
    let mut decoder = JsonDecoder::new(&p.fields, UnknownFields::Ignore);
    let started = Instant::now();
    let mut out_rows = 0usize;
    let mut out_bytes = 0usize;
    for chunk in events.chunks(50_000) {
        let t = Instant::now();
        for e in chunk {
            decoder.push(e).map_err(|e| e.to_string())?;
        }
        let batch: RecordBatch = decoder.finish();
        t_decode += t.elapsed();
        let t = Instant::now();
        let out = transform.run(batch).await.map_err(|e| e.to_string())?;
        let result = out.get("out").cloned().ok_or("no output")?;
        t_sql += t.elapsed();
        let t = Instant::now();
        let mut w = TableWriter::new(spec.clone(), vec![]).map_err(|e| e.to_string())?;
        w.write(&result).map_err(|e| e.to_string())?;
        let last = first + chunk.len() as i64 - 1;
        let seg = ymera_lake::SegmentId {
            topic: "events".into(),
            partition: 0,
            first,
            last,
        };
        let files = w.finish(&seg.file_name()).map_err(|e| e.to_string())?;
        for f in &files {
            out_bytes += f.bytes.len();
            out_rows += f.rows as usize;
        }
        t_parquet += t.elapsed();
        let t = Instant::now();
        let commit =
            ymera_lake::delta::TableCommit::new(&spec, files, vec![(app_id.clone(), first, last)]);
        tables.commit(&commit).await.map_err(|e| e.to_string())?;
        t_commit += t.elapsed();
        commits += 1;
        first = last + 1;
    }
    drop(tables);
    let _ = std::fs::remove_dir_all(&lake_dir);
    let total = started.elapsed().as_secs_f64();
    println!(
        "processing (one core, decode -> SQL -> Parquet zstd -> Delta commit): {:.0} events/s, {:.1} MB/s of JSON; {out_rows} rows, {:.1} MB Parquet",
        n as f64 / total,
        bytes as f64 / total / 1e6,
        out_bytes as f64 / 1e6
    );
    println!(
        "  decode {:.2}s ({:.0} MB/s), SQL {:.2}s, Parquet {:.2}s, Delta commit {:.2}s ({commits} commits, {:.1} ms each); peak RSS {:.0} MiB",
        t_decode.as_secs_f64(),
        bytes as f64 / t_decode.as_secs_f64() / 1e6,
        t_sql.as_secs_f64(),
        t_parquet.as_secs_f64(),
        t_commit.as_secs_f64(),
        t_commit.as_secs_f64() * 1e3 / f64::from(commits.max(1)),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    if let Some(b) = brokers {
        end_to_end(&b, &events).await?;
    }
    Ok(())
}

async fn end_to_end(brokers: &str, events: &[Vec<u8>]) -> Result<(), String> {
    use ymera_ingest::{embedded, produce};
    let resolved = embedded::resolve_brokers(brokers)?;
    let topic = format!("bench-events-{}", std::process::id());
    produce::create_topics(&resolved, &[topic.as_str()], 4)
        .await
        .map_err(|e| e.to_string())?;
    let producer = produce::producer(&resolved, &Default::default()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    producer
        .send_all(events.iter().map(|v| produce::OutRecord {
            topic: &topic,
            key: None,
            value: v,
            timestamp_ms: None,
        }))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "produce: {:.0} events/s",
        events.len() as f64 / t.elapsed().as_secs_f64()
    );
    let mut p = pipeline(&resolved).await?;
    p.spec.source.kafka.topics = vec![topic.clone()];
    p.spec.source.kafka.group_id = format!("ymera-bench-{}", std::process::id());
    let lake_dir = tempdir()?;
    let lake = ymera_lake::Lake::open(&lake_dir).map_err(|e| e.to_string())?;
    let opts = ymera_pipeline::run::RunOptions {
        warehouse: None,
        lake,
        stop_when_idle: Some(Duration::from_secs(2)),
        shutdown: tokio_util::sync::CancellationToken::new(),
        health: Default::default(),
        progress: Default::default(),
        input_rate: None,
        compaction: None,
        memory: None,
    };
    let t = Instant::now();
    let stats = ymera_pipeline::run::run(std::sync::Arc::new(p), resolved, opts)
        .await
        .map_err(|e| e.to_string())?;
    // until the last commit: the idle wait of --stop-when-idle is not work
    let secs = stats
        .last_commit_at
        .map_or(t.elapsed(), |c| c.duration_since(t))
        .as_secs_f64();
    println!(
        "end to end through `{brokers}` (consume -> decode -> SQL -> publish -> commit): {} events in {secs:.2}s = {:.0} events/s, {} files",
        stats.records_in,
        stats.records_in as f64 / secs,
        stats.files_written
    );
    let _ = std::fs::remove_dir_all(&lake_dir);
    Ok(())
}

/// Partitions of the synthetic table of [`bench_delta_log`].
const LOG_PARTITIONS: i32 = 32;

/// For each size: a table with that many commits (one 10-row file and one partition's txn
/// each, partitions round-robin, a checkpoint every 100 commits), the time of the first and
/// the last commits, then the time
/// to read every partition's position from it as an assignment does (load the latest
/// checkpoint and the log after it, then one txn lookup per partition), median of 5.
pub async fn bench_delta_log(sizes: &[usize]) -> u8 {
    match delta_log(sizes).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

async fn delta_log(sizes: &[usize]) -> Result<(), String> {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use ymera_lake::delta::{TableCommit, Tables, app_id, positions};

    let schema = Arc::new(Schema::new(vec![Field::new("seq", DataType::Int64, false)]));
    let spec = TableSpec {
        table: "log".into(),
        partition_by: Vec::new(),
        event_time: None,
        zstd_level: 3,
        schema: schema.clone(),
    };
    let ids: Vec<String> = (0..LOG_PARTITIONS)
        .map(|p| app_id("bench", "events", p))
        .collect();
    for &n in sizes {
        let dir = tempdir()?;
        let lake = ymera_lake::Lake::open(&format!("{dir}/log-{n}")).map_err(|e| e.to_string())?;
        let mut tables = Tables::new(lake.clone());
        let started = Instant::now();
        let mut next = vec![0i64; LOG_PARTITIONS as usize];
        // the cost of one commit, early and late: flat when it does not grow with the table
        let window = 100.min(n / 2).max(1);
        let (mut early, mut late) = (Duration::ZERO, Duration::ZERO);
        for i in 0..n {
            let p = (i % LOG_PARTITIONS as usize) as i32;
            let first = next[p as usize];
            let last = first + 9;
            next[p as usize] = last + 1;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(first..=last))],
            )
            .map_err(|e| e.to_string())?;
            let mut w = TableWriter::new(spec.clone(), Vec::new()).map_err(|e| e.to_string())?;
            w.write(&batch).map_err(|e| e.to_string())?;
            let name = ymera_lake::SegmentId {
                topic: "events".into(),
                partition: p,
                first,
                last,
            }
            .file_name();
            let files = w.finish(&name).map_err(|e| e.to_string())?;
            let txn = (ids[p as usize].clone(), first, last);
            let t = Instant::now();
            tables
                .commit(&TableCommit::new(&spec, files, vec![txn]))
                .await
                .map_err(|e| e.to_string())?;
            if i < window {
                early += t.elapsed();
            } else if i >= n - window {
                late += t.elapsed();
            }
        }
        tables.settle().await;
        let built = started.elapsed();
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let pos = positions(&lake, "log", &ids)
                .await
                .map_err(|e| e.to_string())?;
            times.push(t.elapsed());
            if pos.len() != ids.len() {
                return Err(format!("{} of {} positions found", pos.len(), ids.len()));
            }
        }
        times.sort();
        println!(
            "delta log of {n} commits ({:.1} ms per commit to build; commits 1-{window}: {:.1} ms each, the last {window}: {:.1} ms each): positions of {LOG_PARTITIONS} partitions in {:.1} ms (median of 5; min {:.1}, max {:.1})",
            built.as_secs_f64() * 1e3 / n as f64,
            early.as_secs_f64() * 1e3 / window as f64,
            late.as_secs_f64() * 1e3 / window as f64,
            times[2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn tempdir() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("ymera-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir.display().to_string())
}

/// Rows/s into each warehouse through the sink's own commit path (50,000-row segments,
/// append, one transaction each with its offset row), PostgreSQL by COPY and by multi-row
/// INSERT on the same rows.
pub async fn bench_warehouse(urls: &[String], rows: usize) -> u8 {
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use ymera_warehouse::{Commit, Dialect, Mode, OnReject, TableWrite, Warehouse, WriteMethod};

    const SEGMENT: usize = 50_000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("project_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("hours", DataType::Float64, true),
        Field::new("estimate", DataType::Float64, false),
        Field::new("done", DataType::Boolean, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let statuses = ["todo", "in_progress", "review", "done"];
    let segments: Vec<RecordBatch> = (0..rows.div_ceil(SEGMENT))
        .map(|s| {
            let ids: Vec<i64> = ((s * SEGMENT)..((s + 1) * SEGMENT).min(rows))
                .map(|i| i as i64)
                .collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids.clone())),
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| format!("prj-{:05}", i % 5000)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| statuses[*i as usize % 4]),
                    )),
                    Arc::new(Float64Array::from_iter(
                        ids.iter()
                            .map(|i| (i % 7 != 0).then_some(*i as f64 * 0.25 % 40.0)),
                    )),
                    Arc::new(Float64Array::from_iter_values(
                        ids.iter().map(|i| (i % 13) as f64 + 0.5),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        ids.iter().map(|i| Some(i % 4 == 3)),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            ids.iter().map(|i| 1_764_064_800_000_000 + i * 1000),
                        )
                        .with_timezone("UTC"),
                    ),
                ],
            )
            .expect("bench batch")
        })
        .collect();
    for url in urls {
        let wh = match Warehouse::connect(url).await {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILURE;
            }
        };
        let methods: &[(WriteMethod, &str)] = match wh.dialect() {
            Dialect::Sqlite => &[(
                WriteMethod::Copy,
                "prepared multi-row INSERT (256 rows a statement), one transaction per segment",
            )],
            Dialect::Postgres => &[
                (
                    WriteMethod::Copy,
                    "COPY into a staging table + INSERT … SELECT",
                ),
                (
                    WriteMethod::Insert,
                    "multi-row INSERT … VALUES with bound parameters",
                ),
            ],
        };
        for (method, label) in methods {
            let setup = "DROP TABLE IF EXISTS ymera_bench_rows;
                CREATE TABLE ymera_bench_rows (id BIGINT PRIMARY KEY, project_id TEXT NOT NULL, status TEXT NOT NULL,
                    hours DOUBLE PRECISION, estimate DOUBLE PRECISION NOT NULL, done BOOLEAN NOT NULL, ts TIMESTAMPTZ NOT NULL);
                DELETE FROM _ymera_offsets WHERE pipeline = 'ymera_bench'";
            if let Err(e) = wh.run_trusted_script(setup).await {
                eprintln!("error: {e}");
                return EXIT_FAILURE;
            }
            let started = Instant::now();
            let mut written = 0u64;
            for (i, batch) in segments.iter().enumerate() {
                let first = (i * SEGMENT) as i64;
                let commit = Commit {
                    pipeline: "ymera_bench".into(),
                    topic: "bench".into(),
                    partition: 0,
                    first,
                    next: first + batch.num_rows() as i64,
                    writes: vec![TableWrite {
                        table: "ymera_bench_rows".into(),
                        mode: Mode::Append,
                        batches: vec![batch.clone()],
                        origins: Vec::new(),
                    }],
                    on_reject: OnReject::Abort,
                };
                match wh.commit_with(&commit, *method).await {
                    Ok(done) => written += done.rows,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return EXIT_FAILURE;
                    }
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{:<48} {label}: {written} rows in {secs:.2} s = {:.0} rows/s",
                wh.url(),
                written as f64 / secs
            );
        }
        let _ = wh.run_trusted_script("DROP TABLE IF EXISTS ymera_bench_rows; DELETE FROM _ymera_offsets WHERE pipeline = 'ymera_bench'").await;
        wh.close().await;
    }
    EXIT_OK
}

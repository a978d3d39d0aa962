//! The forbidden-SQL corpus, the query bomb, limits and error messages, on a real lake
//! of Delta tables.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::*;

/// Writes `batch` to a new Delta table `table` of the lake, as one commit.
async fn write_table(lake: &Lake, table: &str, partition_by: &[&str], batch: &RecordBatch) {
    let spec = ymera_lake::TableSpec {
        table: table.into(),
        partition_by: partition_by.iter().map(|c| c.to_string()).collect(),
        event_time: Some("ts".into()),
        zstd_level: 3,
        schema: batch.schema(),
    };
    ymera_lake::delta::append(
        lake,
        &spec,
        vec![batch.clone()],
        "t+0+0-1.parquet",
        Vec::new(),
        Vec::new(),
    )
    .await
    .unwrap();
}

/// `n` rows with ids from `offset`, one a second from midnight of day `day` (0 is
/// 2026-01-01).
fn events(n: i64, offset: i64, day: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("service", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let day0 = 1_767_225_600_000_000i64; // 2026-01-01T00:00:00Z
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(offset..offset + n)),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| ["api", "auth", "search"][i as usize % 3]),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|i| day0 + day * 86_400_000_000 + i * 1_000_000),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

/// A lake with `events` (two `dt` partitions, 100 rows) and `big` (`rows` rows), both
/// Delta tables, and a file outside it.
async fn lake(rows: i64) -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let lake = Lake::open(root.to_str().unwrap()).unwrap();
    let both = arrow::compute::concat_batches(
        &events(1, 0, 0).schema(),
        &[events(50, 0, 0), events(50, 50, 1)],
    )
    .unwrap();
    write_table(&lake, "events", &["dt"], &both).await;
    write_table(&lake, "big", &[], &events(rows, 0, 0)).await;
    std::fs::write(dir.path().join("secret.csv"), "a\n1\n").unwrap();
    (dir, lake)
}

async fn analyst(lake: &Lake, limits: Limits) -> Analyst {
    Analyst::open(lake, None, limits).await.unwrap().0
}

fn pretty(o: &Output) -> String {
    arrow::util::pretty::pretty_format_batches(&o.batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn forbidden_sql_is_refused_and_touches_no_file() {
    let (dir, lake) = lake(10).await;
    let a = analyst(&lake, Limits::default()).await;
    let tmp = dir.path().display().to_string();
    let corpus = [
        "CREATE TABLE x (a INT)".to_string(),
        "CREATE TABLE x AS SELECT * FROM events".into(),
        "CREATE VIEW v AS SELECT * FROM events".into(),
        "DROP TABLE events".into(),
        "ALTER TABLE events ADD COLUMN x INT".into(),
        "INSERT INTO events VALUES (1, 'x')".into(),
        "INSERT INTO events SELECT * FROM events".into(),
        "UPDATE events SET id = 1".into(),
        "DELETE FROM events".into(),
        "TRUNCATE TABLE events".into(),
        format!("COPY (SELECT 1) TO '{tmp}/out.csv'"),
        format!("COPY events TO '{tmp}/out.parquet' STORED AS PARQUET"),
        "SET datafusion.execution.batch_size = 1".into(),
        "SET TIME ZONE = 'Europe/Paris'".into(),
        "RESET datafusion.execution.batch_size".into(),
        format!("CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{tmp}/secret.csv'"),
        format!("SELECT * FROM '{tmp}/secret.csv'"),
        "SELECT * FROM 'file:///etc/passwd'".into(),
        "SELECT * FROM 's3://bucket/x.parquet'".into(),
        format!("WITH x AS (SELECT * FROM '{tmp}/secret.csv') SELECT * FROM x"),
        format!("SELECT * FROM events WHERE id IN (SELECT a FROM '{tmp}/secret.csv')"),
        format!("SELECT * FROM (SELECT * FROM '{tmp}/secret.csv') t"),
        "WITH x AS (INSERT INTO events VALUES (1, 'x') RETURNING *) SELECT * FROM x".into(),
        "EXPLAIN INSERT INTO events VALUES (1, 'x')".into(),
        format!("EXPLAIN COPY (SELECT 1) TO '{tmp}/out2.csv'"),
        "SELECT 1; DROP TABLE events".into(),
        "SHOW TABLES".into(),
        "PREPARE p AS SELECT 1".into(),
    ];
    for sql in &corpus {
        match a.query(sql).await {
            Err(QueryError::Refused(m)) => assert!(
                m.contains("read-only") || m.contains("not supported"),
                "{sql}: {m}"
            ),
            // a construct the parser rejects outright never runs either
            Err(QueryError::Invalid(m))
                if m.contains("Expected")
                    || m.contains("sql parser error")
                    || m.contains("not implemented") => {}
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["lake", "secret.csv"],
        "a refused statement created a file"
    );
    // the session is unchanged and still answers
    let o = a.query("SELECT count(*) AS n FROM events").await.unwrap();
    assert!(pretty(&o).contains("| 100 |"));
}

#[tokio::test]
async fn query_bomb_stops_at_the_memory_limit_or_timeout_and_the_session_stays_usable() {
    let (_dir, lake) = lake(200_000).await;
    let limits = Limits {
        memory: 16 << 20,
        timeout: Duration::from_secs(3),
        max_rows: 1000,
        ..Limits::default()
    };
    let a = analyst(&lake, limits).await;
    // a sort of a cross join must hold its input: the memory limit stops it
    let started = std::time::Instant::now();
    let e = a.query("SELECT x.id, y.id FROM big x CROSS JOIN big y ORDER BY x.service, y.service, x.id DESC LIMIT 5").await.unwrap_err();
    assert!(
        matches!(e, QueryError::TooLarge(_) | QueryError::Timeout(_)),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("memory limit") || e.to_string().contains("time limit"),
        "{e}"
    );
    // counting a 4e10-row cross join streams: the timeout stops it
    let e = a
        .query("SELECT count(*) FROM big x CROSS JOIN big y WHERE x.id + y.id >= 0")
        .await
        .unwrap_err();
    assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let o = a
        .query("SELECT service, count(*) AS n FROM events GROUP BY service ORDER BY service")
        .await
        .unwrap();
    assert!(pretty(&o).contains("| api     | 34 |"), "{}", pretty(&o));
}

#[tokio::test]
async fn rows_are_capped_and_names_get_suggestions() {
    let (_dir, lake) = lake(10).await;
    let a = analyst(
        &lake,
        Limits {
            max_rows: 7,
            ..Limits::default()
        },
    )
    .await;
    let o = a.query("SELECT * FROM events").await.unwrap();
    assert_eq!((o.rows, o.truncated), (7, true));
    let e = a
        .query("SELECT * FROM evnts")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown table `evnts` (did you mean `events`?)"),
        "{e}"
    );
    let e = a
        .query("SELECT servce FROM events")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown column `servce` (did you mean `service`?)"),
        "{e}"
    );
    assert!(
        a.table("evnt")
            .unwrap_err()
            .to_string()
            .contains("did you mean `events`")
    );
}

#[tokio::test]
async fn hive_partitions_are_pruned() {
    let (_dir, lake) = lake(10).await;
    let a = analyst(&lake, Limits::default()).await;
    let t = a.table("events").unwrap();
    assert_eq!(t.partitions, ["dt"]);
    let plan = pretty(
        &a.query("EXPLAIN SELECT id FROM events WHERE dt = DATE '2026-01-02'")
            .await
            .unwrap(),
    );
    assert!(plan.contains("dt=2026-01-02"), "{plan}");
    assert!(
        !plan.contains("dt=2026-01-01"),
        "the other partition is read: {plan}"
    );
    let o = a
        .query("SELECT min(id) AS lo FROM events WHERE dt = DATE '2026-01-02'")
        .await
        .unwrap();
    assert!(pretty(&o).contains("| 50 |"));
}

#[tokio::test]
async fn functions_that_build_values_outside_the_pool_are_capped() {
    let (_dir, lake) = lake(10).await;
    let a = analyst(
        &lake,
        Limits {
            memory: 64 << 20,
            ..Limits::default()
        },
    )
    .await;
    // each of these would allocate gigabytes outside DataFusion's memory pool
    for sql in [
        "SELECT repeat('x', 20000) FROM range(100000)",
        "SELECT length(repeat('x', 2000000000))",
        "SELECT cardinality(range(0, 500000000))",
        "SELECT cardinality(generate_series(1, 500000000))",
        "SELECT cardinality(range(-500000000, 500000000, 2))",
        "SELECT cardinality(range(DATE '1970-01-01', DATE '2100-01-01', INTERVAL '1 second'))",
        "SELECT cardinality(range(TIMESTAMP '2000-01-01 00:00:00', TIMESTAMP '2001-01-01 00:00:00', INTERVAL '1 millisecond'))",
        "SELECT length(lpad('x', 1000000000))",
        "SELECT length(rpad('x', 1000000000, 'ab'))",
        "SELECT cardinality(array_repeat(1, 1000000000))",
        "SELECT cardinality(array_resize([1], 1000000000))",
        "SELECT length(replace(repeat('x', 1000000), 'x', repeat('y', 1000)))",
        "SELECT length(regexp_replace(repeat('x', 1000000), '', repeat('y', 1000), 'g'))",
        "SELECT length(repeat(service, 10000000)) FROM events",
        "SELECT length(string_agg(repeat('x', 1000), ',')) FROM range(1000000)",
        "SELECT cardinality(array_agg(repeat('x', 1000))) FROM range(1000000)",
    ] {
        let e = a.query(sql).await.unwrap_err();
        assert!(matches!(e, QueryError::TooLarge(_)), "{sql}: {e:?}");
    }
    // what they are for still works
    let o = a
        .query(
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, cardinality(range(5)) AS n, \
                cardinality(range(DATE '2026-01-01', DATE '2026-02-01', INTERVAL '1 day')) AS d, \
                array_repeat(1, 2) AS a, replace('aXa', 'X', 'yy') AS s",
        )
        .await
        .unwrap();
    let shown = pretty(&o);
    assert!(
        shown.contains("| ababab | 007 | 5 | 31 | [1, 1] | ayya |"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_result_past_max_result_bytes_is_refused_not_cut() {
    let (_dir, lake) = lake(10).await;
    let a = analyst(
        &lake,
        Limits {
            max_rows: 1_000_000,
            max_result_bytes: 1 << 20,
            ..Limits::default()
        },
    )
    .await;
    let e = a
        .query("SELECT repeat('x', 1000) FROM range(100000)")
        .await
        .unwrap_err();
    assert!(matches!(e, QueryError::TooLarge(_)), "{e:?}");
    assert!(e.to_string().contains("sql.max_result_bytes"), "{e}");
    let o = a
        .query("SELECT repeat('x', 1000) FROM range(500)")
        .await
        .unwrap();
    assert_eq!(o.rows, 500);
}

/// The single integer of a one-row, one-column result.
fn scalar(o: &Output) -> i64 {
    o.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

#[tokio::test]
async fn time_travel_reads_a_table_as_of_a_version_and_a_time() {
    let (_dir, lake) = lake(10).await;
    // `big`: version 1 holds 10 rows; version 2 adds 5 more
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let spec = ymera_lake::TableSpec {
        table: "big".into(),
        partition_by: Vec::new(),
        event_time: Some("ts".into()),
        zstd_level: 3,
        schema: events(1, 0, 0).schema(),
    };
    ymera_lake::delta::append(
        &lake,
        &spec,
        vec![events(5, 100, 0)],
        "t+0+2-3.parquet",
        Vec::new(),
        Vec::new(),
    )
    .await
    .unwrap();
    let a = analyst(&lake, Limits::default()).await;
    let count = |sql: &'static str| {
        let a = &a;
        async move { scalar(&a.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))) }
    };
    assert_eq!(count("SELECT count(*) FROM big").await, 15);
    assert_eq!(count("SELECT count(*) FROM big VERSION AS OF 1").await, 10);
    assert_eq!(count("select count(*) from big version as of 2").await, 15);
    // both versions in one query, each under its own name
    assert_eq!(
        count("SELECT (SELECT count(*) FROM big) - (SELECT count(*) FROM big VERSION AS OF 1)")
            .await,
        5
    );
    let at = format!(
        "SELECT count(*) FROM big TIMESTAMP AS OF '{}'",
        between.format("%Y-%m-%d %H:%M:%S%.3f")
    );
    assert_eq!(scalar(&a.query(&at).await.unwrap()), 10);
    // the shared session never sees the snapshots
    assert!(a.query(r#"SELECT * FROM "big@v1""#).await.is_err());
    // lineage records the version read
    let read = a
        .tables_read_by("SELECT * FROM big VERSION AS OF 1 JOIN events ON true")
        .await
        .unwrap();
    let big = read.iter().find(|t| t.name == "big").unwrap();
    assert_eq!(big.delta.as_ref().unwrap().1, 1);
    // a version the table does not have, and a time before it, say so
    let e = a
        .query("SELECT * FROM big VERSION AS OF 9")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no version 9"), "{e}");
    let e = a
        .query("SELECT * FROM big TIMESTAMP AS OF '2001-01-01'")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no version as of 2001-01-01"), "{e}");
}

/// Every Parquet scan of a lake table reads its footer with the session's size hint (the
/// Delta scan leaves it unset: two reads a file), and the scan follows the session's
/// Parquet settings (no filter pushed into the reader, no page index).
#[tokio::test]
async fn lake_scans_read_footers_in_one_go_and_follow_the_session() {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::physical_plan::ParquetSource;
    use datafusion::datasource::source::DataSourceExec;
    let (_dir, lake) = lake(10).await;
    let a = analyst(&lake, Limits::default()).await;
    let plan = a
        .ctx
        .sql("SELECT count(*) FROM events WHERE id > 3")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let mut sources = Vec::new();
    plan.apply(|node| {
        if let Some(exec) = node.downcast_ref::<DataSourceExec>()
            && let Some((_, parquet)) = exec.downcast_to_file_source::<ParquetSource>()
        {
            sources.push(format!("{parquet:?}"));
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    let hint = a
        .ctx
        .state()
        .config()
        .options()
        .execution
        .parquet
        .metadata_size_hint;
    assert!(hint.is_some_and(|h| h >= 64 * 1024));
    assert!(
        sources[0].contains(&format!("metadata_size_hint: {hint:?}")),
        "{}",
        sources[0]
    );
    let options = a.ctx.state().config().options().clone();
    assert!(!options.execution.parquet.pushdown_filters);
    assert!(!options.execution.parquet.enable_page_index);
    let shown = pretty(
        &a.query("EXPLAIN SELECT count(*) FROM events WHERE id > 3")
            .await
            .unwrap(),
    );
    assert!(!shown.contains("pushdown_filters=true"), "{shown}");
}

/// A one-shot query loads the lake tables it names and no others; what its text cannot
/// tell opens everything.
#[tokio::test]
async fn a_query_names_its_tables() {
    let named = |sql: &str| crate::tables_named_in(sql);
    assert_eq!(named("SELECT 1"), Some(vec![]));
    assert_eq!(
        named(
            "WITH x AS (SELECT * FROM events) SELECT * FROM x JOIN big USING (id) JOIN Events e ON true"
        ),
        Some(vec!["big".to_string(), "events".to_string()])
    );
    assert_eq!(
        named("SELECT * FROM \"Big\""),
        Some(vec!["Big".to_string()])
    );
    // time travel is rewritten by the query itself: its text opens every table
    assert_eq!(named("SELECT * FROM events VERSION AS OF 3"), None);
    assert_eq!(
        named("EXPLAIN SELECT * FROM big"),
        Some(vec!["big".to_string()])
    );
    assert_eq!(named("SELECT * FROM public.events"), None);
    assert_eq!(named("SELECT 1; SELECT 2"), None);
    assert_eq!(named("SELEC 1"), None);

    let (_dir, lake) = lake(10).await;
    let only = vec!["big".to_string()];
    let (a, _) = Analyst::open_some(
        &lake,
        Some(&only),
        None,
        Limits::default(),
        memory_pool(1 << 26),
    )
    .await
    .unwrap();
    assert_eq!(
        a.tables()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["big"]
    );
    assert_eq!(
        scalar(&a.query("SELECT count(*) FROM big").await.unwrap()),
        10
    );
}

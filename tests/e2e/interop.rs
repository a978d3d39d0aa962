//! Every lake table is a Delta table that other engines read unchanged: DuckDB 1.4.4's
//! `delta_scan` (the `duckdb-ext-delta` wheel, loaded offline) and the Python `deltalake`
//! package, installed by scripts/test from PyPI and run as separate processes; and
//! `ymera sql`, with the Hive partitions as columns.

use std::process::Command;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::support::*;

/// Python prelude: `con`, a DuckDB connection with the delta extension loaded from the
/// `duckdb-ext-delta` wheel (no download), and `deltalake`.
pub const PRELUDE: &str = r#"
import sys, glob, os, duckdb, deltalake
site = os.path.dirname(os.path.dirname(duckdb.__file__))
ext = glob.glob(os.path.join(site, "duckdb_ext", "extensions", "v1.4.4", "*", "delta.duckdb_extension"))
assert ext, "duckdb-ext-delta is not installed (scripts/test installs it)"
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{ext[0]}'")
"#;

/// Python epilogue: deltalake 1.6.6 aborts at interpreter exit after `to_pyarrow_table()`
/// ("terminate called without an active exception", exit 134) once its answer is out:
/// leave without running the interpreter's teardown.
pub const EPILOGUE: &str = "sys.stdout.flush()\nos._exit(0)\n";

/// Runs `script` between [`PRELUDE`] and [`EPILOGUE`] with `args`; its stdout, trimmed.
pub fn python(script: &str, args: &[&std::path::Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}\n{EPILOGUE}"))
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 with duckdb and deltalake failed (scripts/test installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn duckdb_and_deltalake_read_the_lake() {
    let lake = seq_lake("interop", 1000, 2).lake;
    let table = lake.path().join("interop");
    let dlq = lake.path().join("_dlq/interop");
    let script = r#"
table, dlq = sys.argv[1], sys.argv[2]
rows = con.sql(f"SELECT count(*), count(DISTINCT seq), min(dt)::VARCHAR, typeof(min(dt)), typeof(min(ts)) FROM delta_scan('{table}')").fetchall()[0]
t = deltalake.DeltaTable(table)
p = t.protocol()
pa = t.to_pyarrow_table()
empty = con.sql(f"SELECT count(*) FROM delta_scan('{dlq}')").fetchall()[0][0]
print(rows[0], rows[1], rows[2], rows[3], rows[4], pa.num_rows, pa.schema.field("ts").type, p.min_reader_version, p.min_writer_version, t.metadata().partition_columns, empty, len(deltalake.DeltaTable(dlq).file_uris()))
"#;
    assert_eq!(
        python(script, &[&table, &dlq]),
        "1000 1000 2025-11-25 DATE TIMESTAMP WITH TIME ZONE 1000 timestamp[us, tz=UTC] 1 2 ['dt'] 0 0",
        "DuckDB/deltalake saw the lake differently"
    );
}

/// Partition values with `/`, space, `%` and `:` (delta-rs#3577) read back as written.
#[test]
fn partition_values_with_reserved_characters_read_back() {
    let values = ["a/b", "c d", "50%", "x:y", "plain"];
    let tmp = tempfile::tempdir().unwrap();
    let lake = ymera_lake::Lake::open(tmp.path().to_str().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("service", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    let spec = ymera_lake::TableSpec {
        table: "odd".into(),
        partition_by: vec!["service".into()],
        event_time: None,
        zstd_level: 3,
        schema: schema.clone(),
    };
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(values.to_vec())),
            Arc::new(Int64Array::from_iter_values(0..values.len() as i64)),
        ],
    )
    .unwrap();
    runtime()
        .block_on(ymera_lake::delta::append(
            &lake,
            &spec,
            vec![batch],
            "t+0+0-4.parquet",
            Vec::new(),
            Vec::new(),
        ))
        .unwrap();
    let script = r#"
table = sys.argv[1]
duck = con.sql(f"SELECT service, n FROM delta_scan('{table}') ORDER BY n").fetchall()
py = sorted(zip(*[deltalake.DeltaTable(table).to_pyarrow_table().column(c).to_pylist() for c in ("n", "service")]))
print(repr([s for s, _ in duck]), repr([s for _, s in py]))
"#;
    let expected = format!("{values:?}").replace('"', "'");
    assert_eq!(
        python(script, &[&tmp.path().join("odd")]),
        format!("{expected} {expected}")
    );
}

#[test]
fn ymera_sql_sees_partitions_as_columns_and_refuses_writes() {
    let lake = seq_lake("sqlq", 500, 2).lake;
    let sql = |q: &str| {
        ymera()
            .args(["sql", "--format", "csv", q])
            .env("YMERA__LAKE__URL", lake.path())
            .env("YMERA__LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };
    let out = sql(
        "SELECT dt, count(*) AS n, sum(CAST(slow AS INT)) AS slow FROM sqlq WHERE dt = DATE '2025-11-25' GROUP BY dt",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // latency_ms = seq % 300 + 0.5 is slow (> 250) for seq % 300 in 250..=299
    let expected_slow = (0..500).filter(|s| s % 300 >= 250).count();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("dt,n,slow\n2025-11-25,500,{expected_slow}")
    );
    for q in [
        "DROP TABLE sqlq",
        "INSERT INTO sqlq SELECT * FROM sqlq",
        "COPY sqlq TO '/tmp/x.csv'",
    ] {
        let out = sql(q);
        assert_eq!(out.status.code(), Some(1), "`{q}` was not refused");
    }
    assert!(lake.path().join("sqlq").is_dir());
}

/// A table ymera has written past a checkpoint, and that Python `deltalake` also appends to
/// and compacts: ymera's next commit goes after theirs without a conflict, its position
/// stays right, and DuckDB and deltalake read every row once.
#[test]
fn a_checkpointed_table_another_tool_also_writes_reads_the_same_everywhere() {
    use ymera_lake::delta::{Committed, Tables, app_id, positions};

    let tmp = tempfile::tempdir().unwrap();
    let lake = ymera_lake::Lake::open(tmp.path().to_str().unwrap()).unwrap();
    let spec = seq_spec("shared");
    let id = app_id("interop", "t", 0);
    let commit = |first: i64, last: i64| seq_commit(&spec, "interop", 0, first, last);
    let rt = runtime();
    let mut tables = Tables::new(lake.clone());
    // 105 commits of one row each: a checkpoint at version 100 (version 0 creates the table)
    rt.block_on(async {
        for i in 0..105 {
            tables.commit(&commit(i, i)).await.unwrap();
        }
        tables.settle().await;
    });
    let table = tmp.path().join("shared");
    assert!(
        table
            .join("_delta_log/00000000000000000100.checkpoint.parquet")
            .exists(),
        "no checkpoint at version 100"
    );
    // another tool appends five rows and compacts the table
    let script = r#"
import pyarrow as pa
table = sys.argv[1]
deltalake.write_deltalake(table, pa.table({"seq": pa.array(range(1000, 1005), type=pa.int64())}), mode="append")
m = deltalake.DeltaTable(table).optimize.compact()
print(m["numFilesRemoved"] > 100)
"#;
    assert_eq!(python(script, &[&table]), "True");
    // ymera, still following the table from version 105, goes after both
    let done = rt.block_on(tables.commit(&commit(105, 109))).unwrap();
    assert!(matches!(done, Committed::Version(108)), "{done:?}");
    let pos = rt
        .block_on(positions(&lake, "shared", std::slice::from_ref(&id)))
        .unwrap();
    assert_eq!(pos.get(&id), Some(&109));
    let script = r#"
table = sys.argv[1]
d = con.sql(f"SELECT count(*), count(DISTINCT seq) FROM delta_scan('{table}')").fetchall()[0]
t = deltalake.DeltaTable(table)
print(d[0], d[1], t.to_pyarrow_table().num_rows, t.transaction_version("ymera:interop:t:0"))
"#;
    assert_eq!(python(script, &[&table]), "115 115 115 109");
}

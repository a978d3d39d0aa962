//! The lake is readable by other engines with nothing but `hive_partitioning`: DuckDB and
//! pyarrow (installed by scripts/test from PyPI), run as separate processes.

use std::process::Command;

use crate::support::*;

#[test]
fn duckdb_and_pyarrow_read_the_lake() {
    let rt = runtime();
    let topic = unique("interop");
    create_topic(&rt, &topic, 2);
    produce(&rt, &topic, &(0..1000).map(seq_record).collect::<Vec<_>>());
    let dir = pipeline_dir(&pipeline_yaml(
        "interop",
        &topic,
        &unique("g"),
        "{ path: _dlq/interop }",
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    run_until_idle(dir.path(), lake.path());
    let script = r#"
import sys, duckdb, pyarrow.dataset as ds
lake = sys.argv[1]
rows = duckdb.sql(f"SELECT count(*), count(DISTINCT seq), min(dt)::VARCHAR, typeof(min(dt)), typeof(min(ts)) FROM read_parquet('{lake}/interop/**/*.parquet', hive_partitioning=true)").fetchall()[0]
t = ds.dataset(f"{lake}/interop", format="parquet", partitioning="hive").to_table()
print(rows[0], rows[1], rows[2], rows[3], rows[4], t.num_rows, t.schema.field("ts").type)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(lake.path())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python3 with duckdb and pyarrow failed (scripts/test installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "1000 1000 2025-11-25 DATE TIMESTAMP WITH TIME ZONE 1000 timestamp[us, tz=UTC]",
        "DuckDB/pyarrow saw the lake differently"
    );
}

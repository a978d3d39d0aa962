//! The lake is readable by other engines with nothing but `hive_partitioning`: DuckDB and
//! pyarrow (installed by scripts/test from PyPI), run as separate processes; and by
//! `ymera sql`, with the Hive partitions as columns.

use std::process::Command;

use crate::support::*;

#[test]
fn duckdb_and_pyarrow_read_the_lake() {
    let lake = seq_lake("interop", 1000, 2).lake;
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

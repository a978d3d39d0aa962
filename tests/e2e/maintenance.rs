//! `ymera lake optimize|vacuum|history` and time travel in `ymera sql`, through the binary,
//! on a table of many small commits (written with ymera's own commit path, no broker), read
//! back by DuckDB 1.4.4 (`delta_scan`) and Python `deltalake` after each step.

use std::path::Path;

use crate::interop::python;
use crate::support::*;

fn lake_cmd(lake: &Path, args: &[&str]) -> std::process::Output {
    ymera()
        .arg("lake")
        .args(args)
        .env("YMERA__LAKE__URL", lake)
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .unwrap()
}

fn sql(lake: &Path, q: &str) -> std::process::Output {
    ymera()
        .args(["sql", "--format", "csv", q])
        .env("YMERA__LAKE__URL", lake)
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .unwrap()
}

/// `rows distinct` as DuckDB and deltalake count the table.
fn counted_elsewhere(table: &Path) -> String {
    let script = r#"
table = sys.argv[1]
d = con.sql(f"SELECT count(*), count(DISTINCT seq) FROM delta_scan('{table}')").fetchall()[0]
print(d[0], d[1], deltalake.DeltaTable(table).to_pyarrow_table().num_rows)
"#;
    python(script, &[table])
}

fn on_disk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| match p.is_dir() {
            true if !p.ends_with("_delta_log") => on_disk(&p),
            _ => usize::from(p.extension().is_some_and(|x| x == "parquet")),
        })
        .sum()
}

#[test]
fn compaction_vacuum_history_and_time_travel_through_the_cli() {
    use ymera_lake::delta::Tables;

    let tmp = tempfile::tempdir().unwrap();
    let lake = ymera_lake::Lake::open(tmp.path().to_str().unwrap()).unwrap();
    let spec = seq_spec("small");
    let rt = runtime();
    // 60 commits of 5 rows, partitions 0 and 1 in turn: 60 files, versions 1..=60
    rt.block_on(async {
        let mut tables = Tables::new(lake.clone());
        for i in 0..60i64 {
            let (p, k) = ((i % 2) as i32, i / 2);
            let first = k * 5 + 1000 * p as i64;
            tables
                .commit(&seq_commit(&spec, "maint", p, first, first + 4))
                .await
                .unwrap();
        }
        tables.settle().await;
    });
    let table = tmp.path().join("small");
    // Parquet files on disk, live or not (the log is not asked)
    let data_files = || on_disk(&table);
    assert_eq!(data_files(), 60);
    assert_eq!(counted_elsewhere(&table), "300 300 300");

    // history: newest first, with the positions each commit brought the table to
    let out = succeeded(lake_cmd(tmp.path(), &["history", "small", "--limit", "2"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("version") && lines[0].contains("positions"),
        "{out}"
    );
    assert!(
        lines[1].trim_start().starts_with("60 ") && lines[1].contains("WRITE"),
        "{out}"
    );
    assert!(lines[1].ends_with("t:1=1149"), "{out}");
    assert!(lines[2].ends_with("t:0=149"), "{out}");

    // compaction of every table (one here): 60 files into 1, 300 rows, readers agree
    let out = succeeded(lake_cmd(tmp.path(), &["optimize"]));
    assert!(
        out.contains("small: 60 files -> 1 (60 compacted into 1, 300 rows"),
        "{out}"
    );
    assert_eq!(counted_elsewhere(&table), "300 300 300");
    let out = succeeded(lake_cmd(tmp.path(), &["optimize", "small"]));
    assert!(out.contains("small: nothing to compact (1 files)"), "{out}");
    let out = succeeded(lake_cmd(
        tmp.path(),
        &["history", "small", "--limit", "1", "--format", "json"],
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["operation"], "OPTIMIZE");
    assert_eq!(
        (v["files_removed"].as_u64(), v["rows_removed"].as_u64()),
        (Some(60), Some(300))
    );
    assert_eq!(
        (v["files_added"].as_u64(), v["rows_added"].as_u64()),
        (Some(1), Some(300))
    );

    // time travel reads the versions before the compaction, and the latest
    let out = succeeded(sql(
        tmp.path(),
        "SELECT count(*) AS n, max(seq) AS m FROM small VERSION AS OF 30",
    ));
    assert_eq!(out.trim(), "n,m\n150,1074");
    let out = succeeded(sql(tmp.path(), "SELECT count(*) AS n FROM small"));
    assert_eq!(out.trim(), "n\n300");
    let before = chrono::Utc::now() - chrono::Duration::days(1);
    let out = sql(
        tmp.path(),
        &format!(
            "SELECT count(*) FROM small TIMESTAMP AS OF '{}'",
            before.format("%Y-%m-%d")
        ),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no version as of"),
        "{out:?}"
    );

    // vacuum: the table's 7-day minimum holds unless forced; a dry run deletes nothing
    let out = lake_cmd(tmp.path(), &["vacuum", "--retain", "0s"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{out:?}"
    );
    let out = succeeded(lake_cmd(
        tmp.path(),
        &["vacuum", "small", "--retain", "0s", "--force", "--dry-run"],
    ));
    assert!(out.starts_with("small: would delete 60 files"), "{out}");
    assert_eq!(data_files(), 61);
    let out = succeeded(lake_cmd(
        tmp.path(),
        &["vacuum", "small", "--retain", "0s", "--force"],
    ));
    assert!(out.starts_with("small: deleted 60 files"), "{out}");
    // nothing the current version needs went
    assert_eq!(data_files(), 1);
    assert_eq!(counted_elsewhere(&table), "300 300 300");
    let out = succeeded(sql(
        tmp.path(),
        "SELECT count(*) AS n, count(DISTINCT seq) AS d FROM small",
    ));
    assert_eq!(out.trim(), "n,d\n300,300");
    // the old version's files are gone: reading them fails, it does not return other rows
    // (a count is still answered from the statistics in the log)
    let out = sql(tmp.path(), "SELECT sum(seq) FROM small VERSION AS OF 30");
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // unknown tables are named
    let out = lake_cmd(tmp.path(), &["history", "smal"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean `small`?"),
        "{out:?}"
    );
}

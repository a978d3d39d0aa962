//! Each sink group resumes from its own position: a warehouse sink added to a pipeline
//! whose lake already holds everything gets the whole history from `start`, while the lake
//! skips what it holds (no file written twice); then both move on together.

use std::ffi::OsString;
use std::path::Path;

use crate::support::*;

fn warehouse_counts(work: &Path, lake: &Path) -> String {
    let out = ymera()
        .args([
            "sql",
            "--format",
            "csv",
            "SELECT count(*) AS n, count(DISTINCT seq) AS d FROM groups_wh",
        ])
        .env("YMERA__LAKE__URL", lake)
        .env(
            "YMERA__WAREHOUSE__URL",
            format!("sqlite://{}/w.db", work.display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn lake_seqs(table: &Path) -> usize {
    let by_partition = seqs_by_partition(table);
    let mut all: Vec<i64> = by_partition.values().flatten().copied().collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a record is twice in the lake");
    assert_contiguous(table);
    n
}

#[test]
fn an_added_warehouse_sink_catches_up_while_the_lake_skips_what_it_holds() {
    let rt = runtime();
    let topic = unique("groups");
    let broker = DevBroker::start(&[(&topic, 2)]);
    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(0..600).map(seq_record).collect::<Vec<_>>(),
    );
    let group = unique("g");
    let work = tempfile::tempdir().unwrap();
    let migrations = work.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("0001_groups.sql"),
        "CREATE TABLE groups_wh (seq BIGINT NOT NULL, ts TIMESTAMPTZ NOT NULL, service TEXT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL, slow BOOLEAN NOT NULL);",
    )
    .unwrap();
    let env: Vec<(&str, OsString)> = vec![
        (
            "YMERA__WAREHOUSE__URL",
            format!("sqlite://{}/w.db", work.path().display()).into(),
        ),
        ("YMERA__WAREHOUSE__MIGRATIONS", migrations.clone().into()),
        ("YMERA__WAREHOUSE__MIGRATE_ON_START", "true".into()),
    ];
    let lake_sink = "  - lake: { table: groups, partition_by: [dt], rolling: { max_rows: 150, max_interval: 1s } }";
    let lake = work.path().join("lake");
    let dir = pipeline_dir(&pipeline_yaml_with_sinks(
        "groups",
        &topic,
        &group,
        lake_sink,
        "{ path: _dlq/groups }",
        "",
    ));
    run_until_idle_env(&broker.bootstrap, dir.path(), &lake, &env);
    let table = lake.join("groups");
    assert_eq!(lake_seqs(&table), 600);
    let files_before = parquet_files(&table);

    // the same pipeline, now with a warehouse sink as well
    let both =
        format!("{lake_sink}\n  - warehouse: {{ table: groups_wh, rolling: {{ max_rows: 150 }} }}");
    std::fs::write(
        dir.path().join("pipeline.yaml"),
        pipeline_yaml_with_sinks("groups", &topic, &group, &both, "{ path: _dlq/groups }", ""),
    )
    .unwrap();
    run_until_idle_env(&broker.bootstrap, dir.path(), &lake, &env);
    assert_eq!(
        warehouse_counts(work.path(), &lake),
        "600,600",
        "the warehouse caught up from `start`"
    );
    assert_eq!(
        parquet_files(&table),
        files_before,
        "the lake rewrote what it held"
    );

    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(600..1000).map(seq_record).collect::<Vec<_>>(),
    );
    run_until_idle_env(&broker.bootstrap, dir.path(), &lake, &env);
    assert_eq!(lake_seqs(&table), 1000);
    assert_eq!(warehouse_counts(work.path(), &lake), "1000,1000");
}

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

/// A nullable column added to a pipeline evolves its table: `validate` says so, `run` adds
/// it with its next commit, older rows read it as null (DuckDB). A column whose type changes
/// is a `validate` error at the sink's line naming table and column. On tansu.
#[test]
fn a_new_column_evolves_the_table_and_a_new_type_is_a_validate_error() {
    let rt = runtime();
    let topic = unique("evolve");
    create_topic(&rt, &topic, 1);
    produce(&rt, &topic, &(0..300).map(seq_record).collect::<Vec<_>>());
    let group = unique("g");
    let yaml = pipeline_yaml("evolve", &topic, &group, "{ path: _dlq/evolve }", "");
    let dir = pipeline_dir(&yaml);
    let lake = tempfile::tempdir().unwrap();
    run_until_idle(dir.path(), lake.path());
    let validate = |dir: &Path| {
        ymera()
            .args(["validate", dir.to_str().unwrap()])
            .env("YMERA_TEST_BROKERS", brokers())
            .env("YMERA__LAKE__URL", lake.path())
            .env("YMERA__LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };
    // v2 writes a new column
    let v2 = pipeline_dir(&yaml.replace(
        "latency_ms > 250 AS slow FROM input",
        "latency_ms > 250 AS slow, upper(service) AS svc FROM input",
    ));
    let out = validate(v2.path());
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gains the nullable column(s) `svc`"),
        "{stderr}"
    );
    produce(&rt, &topic, &(300..400).map(seq_record).collect::<Vec<_>>());
    run_until_idle(v2.path(), lake.path());
    let script = r#"
table = sys.argv[1]
print(con.sql(f"SELECT count(*), count(svc), min(svc) FROM delta_scan('{table}')").fetchall()[0])
"#;
    assert_eq!(
        crate::interop::python(script, &[&lake.path().join("evolve")]),
        "(400, 100, 'SVC-00')"
    );
    // v3 changes `seq` to a string: refused before it runs, at the sink's line
    let v3 = pipeline_dir(&yaml.replace("SELECT seq,", "SELECT CAST(seq AS VARCHAR) AS seq,"));
    let out = validate(v3.path());
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = yaml.lines().position(|l| l.contains("- lake:")).unwrap() + 1;
    assert!(
        stderr.contains(&format!("pipeline.yaml:{line}:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "table `evolve` in the lake has column `seq` as long, the pipeline writes string"
        ),
        "{stderr}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// A lake written by the pre-Delta release (tests/fixtures/pre-delta-lake.md): `ymera run`
/// refuses it and names the migration; `ymera lake migrate` converts every table from the
/// old commit records (the crash leftover no record lists stays out), their offsets as txn
/// versions, and a second run changes nothing. Read back by DuckDB and deltalake.
#[test]
fn a_lake_of_the_previous_release_is_migrated_from_its_commit_records() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    copy_dir(&repo().join("tests/fixtures/pre-delta-lake"), &lake);
    let out = ymera()
        .args(["run", "--stop-when-idle", "1s"])
        .arg(repo().join("pipelines/user_events.yaml"))
        .env("YMERA_BROKERS", brokers())
        .env("YMERA__LAKE__URL", &lake)
        .env("YMERA__RUN__LISTEN", "127.0.0.1:0")
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pre-Delta layout") && stderr.contains("ymera lake migrate"),
        "{stderr}"
    );
    // a dry run writes nothing
    let out = succeeded(lake_cmd(&lake, &["migrate", "--dry-run"]));
    assert!(
        out.contains("user_events: would convert (4 files, 18 rows, 2 positions)"),
        "{out}"
    );
    assert!(!lake.join("user_events/_delta_log").exists());
    let out = succeeded(lake_cmd(&lake, &["migrate"]));
    for line in [
        "metric_anomalies: converted (3 files, 4320 rows, 2 positions)",
        "metric_events: converted (3 files, 4320 rows, 2 positions)",
        "user_events: converted (4 files, 18 rows, 2 positions)",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let out = succeeded(lake_cmd(&lake, &["migrate"]));
    assert_eq!(
        out.matches("already a Delta table, left alone").count(),
        3,
        "{out}"
    );
    // other readers see the recorded rows only, and the positions the records ended at
    let script = r#"
lake = sys.argv[1]
n = [con.sql(f"SELECT count(*) FROM delta_scan('{lake}/{t}')").fetchall()[0][0] for t in ("metric_events", "metric_anomalies", "user_events")]
u = deltalake.DeltaTable(f"{lake}/user_events")
m = deltalake.DeltaTable(f"{lake}/metric_events")
print(n, u.transaction_version("ymera:user_events:user-events:0"), u.transaction_version("ymera:user_events:user-events:1"), m.transaction_version("ymera:metric_events:metric-events:1"), u.metadata().partition_columns)
"#;
    assert_eq!(
        crate::interop::python(script, &[&lake]),
        "[4320, 4320, 18] 1 15 2879 ['dt']"
    );
    let out = succeeded(sql(
        &lake,
        "SELECT dt, count(*) AS n FROM user_events GROUP BY dt ORDER BY dt",
    ));
    assert_eq!(out.trim(), "dt,n\n2026-11-01,9\n2026-11-02,9");
}

/// With default settings (`lake.optimize.*`), `ymera run` compacts the demo pipeline's lake
/// while it runs: the live file count of `task_events` falls (the first pass comes 30 s
/// after start), and every row is there once afterwards. On `ymera broker`.
#[test]
fn with_default_settings_the_demo_lake_holds_fewer_files_while_ymera_run_runs() {
    let broker = DevBroker::start(&[("task-events", 2)]);
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let pipelines = work.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::copy(
        repo().join("pipelines/task_events.yaml"),
        pipelines.join("task_events.yaml"),
    )
    .unwrap();
    let rt = runtime();
    produce_generated(
        &rt,
        &broker.bootstrap,
        &work.path().join("events"),
        &["--days", "30", "--projects", "60", "--services", "none"],
        &[("task-events", "task_id")],
    );
    let expected = std::fs::read_to_string(work.path().join("events/task-events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains(r#""status":"deleted""#))
        .count();
    let mut child = ymera()
        .arg("run")
        .arg(&pipelines)
        .env("YMERA_BROKERS", &broker.bootstrap)
        .env("YMERA__LAKE__URL", &lake)
        .env(
            "YMERA__WAREHOUSE__URL",
            format!("sqlite://{}/warehouse.db", work.path().display()),
        )
        .env(
            "YMERA__WAREHOUSE__MIGRATIONS",
            repo().join("sql/migrations"),
        )
        .env("YMERA__WAREHOUSE__MIGRATE_ON_START", "true")
        .env("YMERA__RUN__LISTEN", "127.0.0.1:0")
        .env("YMERA__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let table = lake.join("task_events");
    let started = std::time::Instant::now();
    let (mut most, mut now) = (0, 0);
    while started.elapsed() < std::time::Duration::from_secs(120) {
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert!(child.try_wait().unwrap().is_none(), "ymera run exited");
        now = parquet_files(&table).len();
        most = most.max(now);
        if now < most {
            break;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(60))
        .expect("ymera run did not stop");
    assert!(status.success(), "{status}");
    assert!(now < most, "the live file count never fell: {most} files");
    let script = r#"
t = sys.argv[1]
print(con.sql(f"SELECT count(*), count(DISTINCT event_id) FROM delta_scan('{t}')").fetchall()[0])
"#;
    assert_eq!(
        crate::interop::python(script, &[&table]),
        format!("({expected}, {expected})")
    );
    eprintln!("task_events: {most} live files -> {now}, {expected} rows");
}

/// A one-shot `ymera sql` opens only the tables its statement names (docs/analyst-sql.md
/// "Speed"), with the answers of opening everything: a lake directory without a Delta log
/// is no table, so the warehouse table of that name is the one read; lake and warehouse
/// tables join; an unknown name gets the usual error with its suggestion. No broker.
#[test]
fn a_one_shot_query_opens_what_it_names_with_the_answers_of_opening_everything() {
    use ymera_lake::delta::Tables;

    let tmp = tempfile::tempdir().unwrap();
    let lake = ymera_lake::Lake::open(tmp.path().to_str().unwrap()).unwrap();
    let spec = seq_spec("small");
    runtime().block_on(async {
        let mut tables = Tables::new(lake.clone());
        for k in 0..3i64 {
            tables
                .commit(&seq_commit(&spec, "oneshot", 0, k * 5, k * 5 + 4))
                .await
                .unwrap();
        }
        tables.settle().await;
    });
    // stray files, no `_delta_log`: listed as a candidate directory, but not a table
    std::fs::create_dir_all(tmp.path().join("stray")).unwrap();
    std::fs::write(tmp.path().join("stray/part-0.parquet"), b"not parquet").unwrap();
    let wh = SqliteWarehouse::new(
        "tables",
        "CREATE TABLE stray (n INTEGER NOT NULL);
         INSERT INTO stray VALUES (1), (2), (3);
         CREATE TABLE labels (seq INTEGER NOT NULL, label TEXT NOT NULL);
         INSERT INTO labels VALUES (0, 'zero'), (14, 'fourteen');",
    );
    let env = wh.env();
    succeeded(
        ymera()
            .args(["warehouse", "migrate"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap(),
    );
    let sql = |q: &str| {
        ymera()
            .args(["sql", "--format", "csv", q])
            .env("YMERA__LAKE__URL", tmp.path())
            .env("YMERA__LOG__LEVEL", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    assert_eq!(succeeded(sql("SELECT count(*) AS n FROM small")), "n\n15\n");
    assert_eq!(succeeded(sql("SELECT sum(n) AS s FROM stray")), "s\n6\n");
    assert_eq!(
        succeeded(sql(
            "SELECT s.seq, l.label FROM small s JOIN labels l USING (seq) ORDER BY s.seq"
        )),
        "seq,label\n0,zero\n14,fourteen\n"
    );
    assert_eq!(succeeded(sql("SELECT 1 AS one")), "one\n1\n");
    let out = sql("SELECT * FROM smal");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smal") && err.contains("small"), "{err}");
}

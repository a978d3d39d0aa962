//! The same behaviour checked on SQLite (a temp file) and on the real PostgreSQL at
//! 127.0.0.1:5432 (database `test`; `YMERA_TEST_POSTGRES_URL` overrides), each test in a
//! schema of its own. PostgreSQL being unreachable fails these tests: it is part of CI.

use std::sync::Arc;

use arrow::array::{
    BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;

use super::*;

const MIGRATION: &str = "CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    hours DOUBLE PRECISION,
    done BOOLEAN,
    n BIGINT,
    ts TIMESTAMPTZ NOT NULL
);
CREATE TABLE events (
    event_id TEXT NOT NULL,
    qty BIGINT CHECK (qty >= 0),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);
";

pub(crate) struct Db {
    pub(crate) wh: Warehouse,
    _dir: tempfile::TempDir,
}

pub(crate) async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/w.db", dir.path().display());
    Db {
        wh: Warehouse::connect(&url).await.unwrap(),
        _dir: dir,
    }
}

pub(crate) fn postgres_url() -> String {
    std::env::var("YMERA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub(crate) async fn postgres(name: &str) -> Db {
    let base = postgres_url();
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (database `test`) is needed by these tests");
    let schema = format!("ymera_t_{name}_{}", std::process::id());
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Db {
        wh: Warehouse::connect(&url).await.unwrap(),
        _dir: tempfile::tempdir().unwrap(),
    }
}

async fn migrated(db: &Db) {
    let dir = db._dir.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0001_tables.sql"), MIGRATION).unwrap();
    let applied = db.wh.migrate(&dir).await.unwrap();
    assert_eq!(applied, vec![(1, "tables".to_string())]);
}

fn tasks(rows: &[(&str, &str, Option<f64>, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("task_id", DataType::Utf8, false),
        Field::new("project_id", DataType::Utf8, false),
        Field::new("hours", DataType::Float64, true),
        Field::new("done", DataType::Boolean, true),
        Field::new("n", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.3 % 2 == 0)),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| 1_767_225_600_000_000 + r.3),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

fn commit(first: i64, next: i64, mode: Mode, batches: Vec<RecordBatch>) -> Commit {
    Commit {
        pipeline: "p".into(),
        topic: "t".into(),
        partition: 0,
        first,
        next,
        writes: vec![TableWrite {
            table: "tasks".into(),
            mode,
            batches,
            origins: vec![],
        }],
        on_reject: OnReject::DeadLetter,
    }
}

async fn query(wh: &Warehouse, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    provider::register_tables(&ctx, wh).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn migrations_apply_once_and_refuse_edits(db: Db) {
    migrated(&db).await;
    let dir = db._dir.path().join("migrations");
    assert!(
        db.wh.migrate(&dir).await.unwrap().is_empty(),
        "nothing new to apply"
    );
    let t = db.wh.describe("tasks").await.unwrap().unwrap();
    assert_eq!(t.unique_keys, vec![vec!["task_id".to_string()]]);
    assert!(t.column("project_id").unwrap().not_null);
    assert_eq!(
        t.column("ts").unwrap().kind,
        SqlKind::Timestamp { tz: true }
    );
    let e = db.wh.describe("events").await.unwrap().unwrap();
    assert_eq!(e.unique_keys, vec![vec!["event_id".to_string()]]);
    assert_eq!(
        db.wh.tables().await.unwrap(),
        vec![
            "_ymera_alert_states",
            "_ymera_dead_letters",
            "events",
            "tasks"
        ]
    );
    // an applied migration that changed is refused
    std::fs::write(
        dir.join("0001_tables.sql"),
        format!("{MIGRATION}\n-- edited"),
    )
    .unwrap();
    let err = db.wh.migrate(&dir).await.unwrap_err().to_string();
    assert!(err.contains("1"), "{err}");
    let missing = db.wh.require("taskz").await.unwrap_err().to_string();
    assert!(missing.contains("did you mean `tasks`"), "{missing}");
}

async fn append_commits_rows_and_offsets_together(db: Db, method: WriteMethod) {
    migrated(&db).await;
    let c = commit(
        0,
        3,
        Mode::Append,
        vec![
            tasks(&[("a", "p1", Some(1.5), 0), ("b", "p1", None, 1)]),
            tasks(&[("c\t\"x\\", "p2", Some(2.0), 2)]),
        ],
    );
    let done = db.wh.commit_with(&c, method).await.unwrap();
    assert_eq!(done.rows, 3);
    assert!(done.rejected.is_empty());
    let pos = db.wh.read_positions("p").await.unwrap();
    assert_eq!(pos.get(&("t".to_string(), 0)), Some(&3));
    // a duplicate key in append mode is rejected, naming the constraint; the rest commits
    let c = commit(
        3,
        5,
        Mode::Append,
        vec![tasks(&[("a", "p9", None, 3), ("d", "p1", None, 4)])],
    );
    let done = db.wh.commit_with(&c, method).await.unwrap();
    assert_eq!(done.rows, 1);
    assert_eq!(done.rejected.len(), 1);
    assert_eq!((done.rejected[0].batch, done.rejected[0].row), (0, 0));
    let m = &done.rejected[0].message;
    assert!(
        m.contains("tasks") && (m.contains("tasks_pkey") || m.contains("UNIQUE")),
        "{m}"
    );
    // ... and is kept, exactly once, in the dead-letter table with the row as JSON
    let dl = query(&db.wh, "SELECT ymera_table, ymera_source_offset, ymera_error_stage, value FROM _ymera_dead_letters").await;
    assert!(dl[3].contains("| tasks       | 4                   | sink              | {\"task_id\":\"a\",\"project_id\":\"p9\""), "{dl:#?}");
    // with on_bad_record: fail the whole segment is refused and nothing moves
    let mut strict = commit(5, 6, Mode::Append, vec![tasks(&[("b", "p1", None, 5)])]);
    strict.on_reject = OnReject::Abort;
    let e = db
        .wh
        .commit_with(&strict, method)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t/0/5 refused") && e.contains("on_bad_record: fail"),
        "{e}"
    );
    assert_eq!(
        db.wh.read_positions("p").await.unwrap()[&("t".to_string(), 0)],
        5
    );
    // a writer that does not continue from the stored offset is fenced, and writes nothing
    let stale = commit(3, 6, Mode::Append, vec![tasks(&[("z", "p1", None, 5)])]);
    let e = db.wh.commit_with(&stale, method).await.unwrap_err();
    assert!(matches!(e, WarehouseError::Fenced(_)), "{e}");
    let rows = query(
        &db.wh,
        "SELECT task_id, project_id, hours, n, done, ts FROM tasks ORDER BY n",
    )
    .await;
    assert_eq!(rows.len(), 8, "{rows:#?}");
    assert_eq!(
        rows[3..7],
        [
            "| a       | p1         | 1.5   | 0 | true  | 2026-01-01T00:00:00Z        |",
            "| b       | p1         |       | 1 | false | 2026-01-01T00:00:00.000001Z |",
            "| c\t\"x\\   | p2         | 2.0   | 2 | true  | 2026-01-01T00:00:00.000002Z |",
            "| d       | p1         |       | 4 | true  | 2026-01-01T00:00:00.000004Z |",
        ],
        "{rows:#?}"
    );
    assert_eq!(
        db.wh.read_positions("p").await.unwrap()[&("t".to_string(), 0)],
        5
    );
}

async fn upsert_keeps_the_last_row_per_key(db: Db, method: WriteMethod) {
    migrated(&db).await;
    let up = || Mode::Upsert(vec!["task_id".into()]);
    db.wh
        .commit_with(
            &commit(
                0,
                2,
                up(),
                vec![tasks(&[
                    ("a", "p1", Some(1.0), 0),
                    ("b", "p1", Some(1.0), 1),
                ])],
            ),
            method,
        )
        .await
        .unwrap();
    // the same key twice in one segment, and a key that exists
    db.wh
        .commit_with(
            &commit(
                2,
                5,
                up(),
                vec![tasks(&[
                    ("a", "p2", Some(2.0), 2),
                    ("c", "p1", None, 3),
                    ("a", "p3", Some(3.0), 4),
                ])],
            ),
            method,
        )
        .await
        .unwrap();
    let rows = query(
        &db.wh,
        "SELECT task_id, project_id, hours FROM tasks ORDER BY task_id",
    )
    .await;
    assert_eq!(
        rows[3..6],
        [
            "| a       | p3         | 3.0   |",
            "| b       | p1         | 1.0   |",
            "| c       | p1         |       |"
        ],
        "{rows:#?}"
    );
}

async fn lake_and_warehouse_tables_join(db: Db) {
    migrated(&db).await;
    db.wh
        .commit(&commit(
            0,
            2,
            Mode::Append,
            vec![tasks(&[
                ("a", "p1", Some(1.0), 0),
                ("b", "p2", Some(4.0), 1),
            ])],
        ))
        .await
        .unwrap();
    let ctx = SessionContext::new();
    ctx.register_batch(
        "projects",
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("project_id", DataType::Utf8, false),
                Field::new("team", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["p1", "p2"])),
                Arc::new(StringArray::from(vec!["red", "blue"])),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    let (tables, _) = provider::register_tables(&ctx, &db.wh).await.unwrap();
    assert_eq!(tables.len(), 4); // tasks, events, _ymera_dead_letters, _ymera_alert_states
    let b = ctx
        .sql("SELECT p.team, sum(t.hours) AS h, count(*) AS n FROM tasks t JOIN projects p USING (project_id) GROUP BY p.team ORDER BY p.team")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let s = arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string();
    assert!(
        s.contains("| blue | 4.0 | 1 |") && s.contains("| red  | 1.0 | 1 |"),
        "{s}"
    );
    let n = ctx
        .sql("SELECT count(*) FROM events")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&n)
            .unwrap()
            .to_string()
            .matches("| 0 ")
            .count(),
        1
    );
}

#[tokio::test]
async fn sqlite_migrations() {
    migrations_apply_once_and_refuse_edits(sqlite().await).await;
}
#[tokio::test]
async fn postgres_migrations() {
    migrations_apply_once_and_refuse_edits(postgres("migr").await).await;
}
#[tokio::test]
async fn sqlite_append() {
    append_commits_rows_and_offsets_together(sqlite().await, WriteMethod::Copy).await;
}
#[tokio::test]
async fn postgres_append_copy() {
    append_commits_rows_and_offsets_together(postgres("append_copy").await, WriteMethod::Copy)
        .await;
}
#[tokio::test]
async fn postgres_append_insert() {
    append_commits_rows_and_offsets_together(postgres("append_ins").await, WriteMethod::Insert)
        .await;
}
#[tokio::test]
async fn sqlite_upsert() {
    upsert_keeps_the_last_row_per_key(sqlite().await, WriteMethod::Copy).await;
}
#[tokio::test]
async fn postgres_upsert_copy() {
    upsert_keeps_the_last_row_per_key(postgres("upsert_copy").await, WriteMethod::Copy).await;
}
#[tokio::test]
async fn postgres_upsert_insert() {
    upsert_keeps_the_last_row_per_key(postgres("upsert_ins").await, WriteMethod::Insert).await;
}
#[tokio::test]
async fn sqlite_join_with_other_tables() {
    lake_and_warehouse_tables_join(sqlite().await).await;
}
#[tokio::test]
async fn postgres_join_with_other_tables() {
    lake_and_warehouse_tables_join(postgres("join").await).await;
}

#[test]
fn fit_names_unknown_columns_types_and_keys() {
    let t = TableInfo {
        name: "tasks".into(),
        columns: vec![
            Column {
                name: "task_id".into(),
                declared: "TEXT".into(),
                kind: SqlKind::Text,
                not_null: true,
                has_default: false,
            },
            Column {
                name: "hours".into(),
                declared: "DOUBLE PRECISION".into(),
                kind: SqlKind::Float,
                not_null: false,
                has_default: false,
            },
            Column {
                name: "owner".into(),
                declared: "TEXT".into(),
                kind: SqlKind::Text,
                not_null: true,
                has_default: false,
            },
        ],
        unique_keys: vec![vec!["task_id".into()]],
    };
    let out = Schema::new(vec![
        Field::new("task_id", DataType::Utf8, true),
        Field::new("hour", DataType::Float64, true),
        Field::new("hours", DataType::Boolean, true),
    ]);
    let errors = fit(&t, &out, Some(&["hours".to_string()]))
        .unwrap_err()
        .join("\n");
    assert!(errors.contains("column `hour` of the sink's input is not a column of warehouse table `tasks` (did you mean `hours`?)"), "{errors}");
    assert!(
        errors.contains("column `hours` is Boolean in the pipeline but DOUBLE PRECISION"),
        "{errors}"
    );
    assert!(
        errors.contains("`owner` is NOT NULL without a default"),
        "{errors}"
    );
    assert!(errors.contains("upsert key (hours) is not the primary key or a unique constraint of warehouse table `tasks` (unique keys: (task_id))"), "{errors}");
    let ok = Schema::new(vec![
        Field::new("task_id", DataType::Utf8, true),
        Field::new("owner", DataType::Utf8View, false),
        Field::new("hours", DataType::Int32, true),
    ]);
    let warnings = fit(&t, &ok, Some(&["task_id".to_string()])).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`task_id` may be null"));
}

#[test]
fn identifiers_are_checked_and_urls_redacted() {
    assert!(ident("tasks_2").is_ok());
    for bad in ["", "2x", "a b", "a\"b", "x;drop", &"a".repeat(64)] {
        assert!(ident(bad).is_err(), "{bad}");
    }
    assert_eq!(
        redact("postgres://u:secret@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(redact("sqlite://./w.db"), "sqlite://./w.db");
}

fn id_batch(ids: &[&str]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(
            ids.iter().map(|s| Some(*s)).collect::<Vec<_>>(),
        ))],
    )
    .unwrap()
}

fn id_commit(table: &str, first: i64, ids: &[&str]) -> Commit {
    Commit {
        pipeline: "p".into(),
        topic: "t".into(),
        partition: 0,
        first,
        next: first + ids.len() as i64,
        writes: vec![TableWrite {
            table: table.into(),
            mode: Mode::Append,
            batches: vec![id_batch(ids)],
            origins: vec![],
        }],
        on_reject: OnReject::DeadLetter,
    }
}

#[tokio::test]
async fn postgres_fallback_finds_bad_rows_in_any_column_type() {
    // a uuid key: binding text to it would fail; the fallback goes through COPY's parsing
    let db = postgres("uuid").await;
    db.wh
        .run_trusted_script("CREATE TABLE u (id uuid PRIMARY KEY)")
        .await
        .unwrap();
    let a = "8c0756f2-0000-4000-8000-000000000001";
    let b = "8c0756f2-0000-4000-8000-000000000002";
    let done = db.wh.commit(&id_commit("u", 0, &[a, b, a])).await.unwrap();
    assert_eq!(
        (done.rows, done.rejected.len()),
        (2, 1),
        "{:?}",
        done.rejected
    );
    assert!(
        done.rejected[0].message.contains("u_pkey"),
        "{:?}",
        done.rejected
    );
}

#[tokio::test]
async fn sqlite_never_commits_half_a_segment() {
    // a conflict clause that rolls the whole transaction back: the commit must fail, with
    // no row and no offset kept
    let db = sqlite().await;
    db.wh
        .run_trusted_script("CREATE TABLE r (id TEXT, UNIQUE (id) ON CONFLICT ROLLBACK)")
        .await
        .unwrap();
    db.wh.commit(&id_commit("r", 0, &["a"])).await.unwrap();
    let e = db.wh.commit(&id_commit("r", 1, &["b", "a", "c"])).await;
    assert!(e.is_err(), "{e:?}");
    assert_eq!(
        db.wh.read_positions("p").await.unwrap()[&("t".to_string(), 0)],
        1
    );
    let rows = query(&db.wh, "SELECT count(*) AS n FROM r").await;
    assert!(rows[3].contains("| 1 |"), "{rows:?}");
    // a plain unique key: the bad row is set aside, the others commit
    db.wh
        .run_trusted_script("CREATE TABLE k (id TEXT UNIQUE)")
        .await
        .unwrap();
    let done = db
        .wh
        .commit(&Commit {
            pipeline: "q".into(),
            ..id_commit("k", 0, &["x", "y", "x", "z"])
        })
        .await
        .unwrap();
    assert_eq!((done.rows, done.rejected.len()), (3, 1));
}

#[tokio::test]
async fn a_segment_without_rows_still_advances_the_offset() {
    // every record of the segment was dead-lettered: an upsert sink gets no batch at all
    let db = sqlite().await;
    migrated(&db).await;
    let c = commit(0, 3, Mode::Upsert(vec!["task_id".into()]), vec![]);
    let done = db.wh.commit(&c).await.unwrap();
    assert_eq!(done.rows, 0);
    assert_eq!(
        db.wh.read_positions("p").await.unwrap()[&("t".to_string(), 0)],
        3
    );
}

/// Analyst scans of a SQLite file go through rusqlite (`sqlite_scan`); an in-memory
/// database, and PostgreSQL, through sqlx. Both read every value the same way, whatever
/// form another writer left it in, and a value neither can read is an error naming the
/// table and column.
#[tokio::test]
async fn sqlite_file_scans_read_what_sqlx_reads() {
    let db = sqlite().await;
    db.wh
        .execute(
            "CREATE TABLE odd (s TEXT, n BIGINT, f DOUBLE PRECISION, b BOOLEAN, ts TIMESTAMPTZ,
                 local TIMESTAMP WITHOUT TIME ZONE, d DATE, j JSON);
             INSERT INTO odd VALUES
              ('a', 1, 1.5, 1, '2026-01-02T03:04:05.123456+00:00', '2026-01-02 03:04:05', '2026-01-02', '{\"k\": 1}'),
              (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
              ('é', -7, 2, 0, '2026-01-02 03:04:05', '2026-01-02T03:04:05.5+02:00', '1970-01-01', 'x'),
              ('x', 0, 0.25, 5, '2026-01-02 03:04:05.5+02:00', '2026-01-02T03:04Z', '2000-02-29', NULL),
              ('y', 9007199254740993, 1e300, 0, 1767225600, 1767225600, NULL, NULL),
              ('z', 4, -0.0, 1, 2461042.5, '2026-01-02 03:04', NULL, NULL);",
        )
        .await
        .unwrap();
    assert!(
        db.wh.sqlite_file.is_some(),
        "a file warehouse scans natively"
    );
    let mut via_sqlx = db.wh.clone();
    via_sqlx.sqlite_file = None;
    let sql = "SELECT s, n, f, b, ts, local, d, j FROM odd ORDER BY n NULLS FIRST";
    let native = query(&db.wh, sql).await;
    assert_eq!(native, query(&via_sqlx, sql).await);
    let text = native.join("\n");
    for expected in [
        "| a | 1                | 1.5    | true  | 2026-01-02T03:04:05.123456Z | 2026-01-02T03:04:05Z   | 2026-01-02 | {\"k\": 1} |",
        "| é | -7               | 2.0    | false | 2026-01-02T03:04:05Z        | 2026-01-02T03:04:05.500Z | 1970-01-01 | x        |",
        "| x | 0                | 0.25   | true  | 2026-01-02T01:04:05.500Z    | 2026-01-02T03:04:00Z   | 2000-02-29 |          |",
        "| y | 9007199254740993 | 1e300  | false | 2026-01-01T00:00:00Z        | 2026-01-01T00:00:00Z   |            |          |",
        // SQLite keeps -0.0 as 0.0; Julian day 2461042.5 is 2026-01-02 00:00 UTC
        "| z | 4                | 0.0    | true  | 2026-01-02T00:00:00Z        | 2026-01-02T03:04:00Z   |            |          |",
    ] {
        assert!(
            native
                .iter()
                .any(|l| l.split_whitespace().eq(expected.split_whitespace())),
            "{expected}\nnot in\n{text}"
        );
    }
    // count(*) reads no column: rows are counted
    assert!(
        query(&db.wh, "SELECT count(*) AS n FROM odd")
            .await
            .iter()
            .any(|l| l.contains("| 6 "))
    );

    // a value neither path reads is refused by both, naming the table and column: a time
    // that is no time, and a number in a JSON column (sqlx reads text as text only)
    for (insert, column, shown) in [
        (
            "INSERT INTO odd (s, ts) VALUES ('bad', 'half past nine')",
            "ts",
            "half past nine",
        ),
        ("INSERT INTO odd (s, j) VALUES ('bad', 42)", "j", "INTEGER"),
    ] {
        db.wh
            .execute("DELETE FROM odd WHERE s = 'bad'")
            .await
            .unwrap();
        db.wh.execute(insert).await.unwrap();
        for (path, wh) in [("rusqlite", &db.wh), ("sqlx", &via_sqlx)] {
            let ctx = SessionContext::new();
            provider::register_tables(&ctx, wh).await.unwrap();
            let err = ctx
                .sql(&format!("SELECT {column} FROM odd"))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("warehouse table `odd` column `{column}`"))
                    && err.to_uppercase().contains(&shown.to_uppercase()),
                "{path}: {err}"
            );
        }
    }
}

/// A commit that waits on another session's lock fails within `lock_timeout`, as an
/// external (retried) error, and the retry after the lock is gone commits once. Each
/// session gets ymera's lock and statement timeouts unless the URL sets its own.
#[tokio::test]
async fn postgres_a_locked_table_fails_the_commit_in_bounded_time_and_the_retry_commits_once() {
    let db = postgres("lock").await;
    migrated(&db).await;
    let Pool::Postgres(pool) = &db.wh.pool else {
        unreachable!()
    };
    let shown: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(shown, PG_LOCK_TIMEOUT);
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(shown, "10min");
    // the same schema through a URL of its own with a short lock_timeout
    let url = db.wh.url().to_string();
    assert!(url.contains("search_path"), "{url}");
    let short = Warehouse::connect(&format!("{url}%20-c%20lock_timeout%3D1s"))
        .await
        .unwrap();
    let Pool::Postgres(short_pool) = &short.pool else {
        unreachable!()
    };
    let shown: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(short_pool)
        .await
        .unwrap();
    assert_eq!(shown, "1s");
    // a setting whose name merely contains `lock_timeout` leaves the default in place
    let other = Warehouse::connect(&format!("{url}%20-c%20deadlock_timeout%3D2s"))
        .await
        .unwrap();
    let Pool::Postgres(other_pool) = &other.pool else {
        unreachable!()
    };
    let shown: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(other_pool)
        .await
        .unwrap();
    assert_eq!(shown, PG_LOCK_TIMEOUT);
    other.close().await;
    // another session holds the table
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let c = commit(
        0,
        2,
        Mode::Append,
        vec![tasks(&[("a", "p", None, 0), ("b", "p", None, 1)])],
    );
    let started = std::time::Instant::now();
    let e = short.commit(&c).await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.class(), ymera_common::ErrorClass::External, "{e}");
    assert!(e.to_string().contains("lock"), "{e}");
    locker.rollback().await.unwrap();
    short.commit(&c).await.unwrap();
    assert_eq!(
        query(&db.wh, "SELECT count(*) AS n FROM tasks").await[3],
        "| 2 |"
    );
    assert_eq!(
        db.wh.read_positions("p").await.unwrap()[&("t".to_string(), 0)],
        2
    );
}

/// A full SQLite database (a full disk, as SQLite reports it) is an external error: the
/// runtime pauses and retries it like the lake's.
#[tokio::test]
async fn sqlite_a_full_database_is_a_transient_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/full.db", dir.path().display());
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
    sqlx::raw_sql("CREATE TABLE t (x TEXT); PRAGMA max_page_count = 8;")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut full = None;
    for _ in 0..1000 {
        if let Err(e) = sqlx::query("INSERT INTO t VALUES (?)")
            .bind("x".repeat(4096))
            .execute(&mut conn)
            .await
        {
            full = Some(e);
            break;
        }
    }
    let e = WarehouseError::from_sqlx(full.expect("the database never filled up"), &url);
    assert_eq!(e.class(), ymera_common::ErrorClass::External, "{e}");
    assert!(e.to_string().contains("full"), "{e}");
}

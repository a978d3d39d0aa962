//! The analyst queries of `sql/queries/`: each `NAME.sql` runs through `ymera sql` over a
//! lake and a warehouse filled by the repository's own `pipelines/` from generated events
//! (`ymera gen`, seed 7, 4 days, 12 projects, plus three malformed task events), and its
//! CSV result must equal `NAME.csv`. Adding a query test is adding those two files; run
//! with `YMERA_BLESS=1` to write the expected files from the current results.

use std::path::PathBuf;
use std::process::Stdio;

use crate::support::*;

const TOPICS: [&str; 4] = [
    "project-events",
    "task-events",
    "user-events",
    "metric-events",
];

#[test]
fn example_queries_give_their_expected_results() {
    let topics: Vec<(&str, i32)> = TOPICS.iter().map(|t| (*t, 2)).collect();
    let broker = DevBroker::start(&topics);
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let env = [
        ("YMERA_BROKERS", broker.bootstrap.clone()),
        ("YMERA__LAKE__URL", lake.display().to_string()),
        (
            "YMERA__WAREHOUSE__URL",
            format!("sqlite://{}/warehouse.db", work.path().display()),
        ),
        (
            "YMERA__WAREHOUSE__MIGRATIONS",
            repo().join("sql/migrations").display().to_string(),
        ),
        ("YMERA__WAREHOUSE__MIGRATE_ON_START", "true".into()),
        ("YMERA__LOG__LEVEL", "warn".into()),
    ];
    // `ymera gen` creates its topics through the admin API, which the mock cluster lacks:
    // write the events as files and produce them keyed by their entity, as gen does
    let rt = runtime();
    produce_generated(
        &rt,
        &broker.bootstrap,
        &work.path().join("events"),
        &["--days", "4", "--projects", "12", "--seed", "7"],
        &[
            ("project-events", "project_id"),
            ("task-events", "task_id"),
            ("user-events", "user_id"),
            ("metric-events", "service"),
        ],
    );
    let bad: Vec<(Vec<u8>, Vec<u8>)> = [
        r#"{"event_id":"bad-1","ts":"2026-11-01T10:00:00Z","task_id":"t-bad","project_id":"prj-0001","status":"todo","task_type":"feature","complexity":"high","estimate_hours":3.0}"#,
        r#"{"event_id":"bad-2","ts":"2026-11-01T11:00:00Z","task_id":"t-bad","project_id":"prj-0001","status":"todo","task_type":"feature","complexity":2}"#,
        r#"not json"#,
    ]
    .iter()
    .map(|v| (b"bad".to_vec(), v.as_bytes().to_vec()))
    .collect();
    produce_to(&rt, &broker.bootstrap, "task-events", &bad);

    let mut run = ymera();
    run.args(["run", "--stop-when-idle", "4s"])
        .arg(repo().join("pipelines"))
        .envs(env.iter().cloned())
        .env("YMERA__RUN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null());
    let mut child = run.spawn().unwrap();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(240))
        .expect("ymera run did not finish");
    assert!(status.success(), "ymera run failed");

    let bless = std::env::var_os("YMERA_BLESS").is_some();
    let mut queries: Vec<PathBuf> = std::fs::read_dir(repo().join("sql/queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    queries.sort();
    assert!(
        queries.len() >= 5,
        "sql/queries holds {} queries",
        queries.len()
    );
    let mut failures = Vec::new();
    for q in &queries {
        let out = ymera()
            .args(["sql", "--format", "csv"])
            .envs(env.iter().cloned())
            .stdin(std::fs::File::open(q).unwrap())
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: {}",
            q.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_file = q.with_extension("csv");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_else(|_| {
            panic!(
                "{} is missing (YMERA_BLESS=1 writes it)",
                expected_file.display()
            )
        });
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{got}",
                q.display()
            ));
        }
        assert!(got.lines().count() > 1, "{} returned no rows", q.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
